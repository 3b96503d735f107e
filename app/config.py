"""The app's settings: one frozen dataclass, built once by launch.py and changed with `dataclasses.replace`."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from formats.images import MAX_PIXELS

DEFAULT_DATA_DIR = Path("resi-data")
DEFAULT_CHECKPOINT = Path("checkpoints/demo")
DEFAULT_TEXT_ENCODER = "minilm"
DEFAULT_MAX_UPLOAD_MB = 50
DEFAULT_CLAIM_MINUTES = 15.0  # storage.repo.CLAIM_SECONDS / 60
DEFAULT_MAX_PIXELS = MAX_PIXELS
MAX_CLASSES = 500


class ConfigError(ValueError):
    """A launch setting that cannot work; the message says which and why."""


@dataclass(frozen=True)
class AppConfig:
    host: str = "127.0.0.1"
    port: int = 7860
    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    checkpoint: Path = DEFAULT_CHECKPOINT
    text_encoder: str = DEFAULT_TEXT_ENCODER
    # (user, password) pairs; empty means no login page.
    auth: tuple[tuple[str, str], ...] = ()
    allow_unauthenticated_remote: bool = False
    max_upload_mb: int = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    # torch device for the predictor: "auto" picks CUDA when present.
    device: str = "auto"
    # CPU threads the model's proposals may use (torch's intra-op pool); None: torch's own choice (every
    # core). On a server shared with other work, fewer leave cores to it. On this project's 2-core VM, 1
    # and 2 gave the same save latency under 20 users (scripts/bench_load.py --model-threads, docs/APP.md).
    model_threads: int | None = None
    # The model runs in a process of its own at a lower CPU priority (app/model_worker.py), so a proposal
    # neither holds the interpreter lock that saves need nor takes their CPU; False: in the app's process.
    model_process: bool = True
    # Domain-aware OMI: query sets of a domain other than the image's likeliest need this score
    # (docs/MODEL.md); None (the default) shows every set's proposals at the normal threshold.
    out_of_domain_threshold: float | None = None
    # How long an image stays "being labeled" by the user who last opened or edited it (image claims:
    # Accept & next and Skip send other users elsewhere meanwhile).
    claim_minutes: float = DEFAULT_CLAIM_MINUTES

    @property
    def image_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def export_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def claim_seconds(self) -> float:
        return self.claim_minutes * 60

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def is_loopback(host: str) -> bool:
    """True for hosts only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_config(config: AppConfig) -> None:
    """Raise ConfigError for settings that would be unsafe or cannot work."""
    if not is_loopback(config.host) and not config.auth and not config.allow_unauthenticated_remote:
        raise ConfigError(
            f"Refusing to listen on {config.host!r} without a login: anyone on the network could read and "
            f"change your annotations. Add logins with --auth-file FILE (user:password lines) or ${AUTH_ENV}, "
            "or pass --allow-unauthenticated-remote if the network is trusted."
        )
    if not 0 < config.port < 65536:
        raise ConfigError(f"Port {config.port} is not between 1 and 65535.")
    if config.max_upload_mb <= 0:
        raise ConfigError("--max-upload-mb must be a positive number of megabytes.")
    if not 0 < config.claim_minutes <= 24 * 60:
        raise ConfigError(f"--claim-minutes must be more than 0 and at most 1440 (a day), not {config.claim_minutes:g}.")
    if config.model_threads is not None and not 1 <= config.model_threads <= 1024:
        raise ConfigError(f"--model-threads must be a number of threads from 1 to 1024, not {config.model_threads}.")


def parse_auth_pair(text: str) -> tuple[str, str]:
    """`user:password` → (user, password). The password may contain ':'."""
    user, sep, password = text.strip().partition(":")
    if not sep or not user or not password:
        raise ConfigError(f"Login {text.strip()[:40]!r} is not of the form user:password.")
    return user, password


def parse_auth_lines(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """One `user:password` per line; blank lines and lines starting with '#' are skipped."""
    lines = text.splitlines()
    pairs = tuple(parse_auth_pair(line) for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not pairs:
        raise ConfigError(f"{where} lists no user:password line.")
    return pairs


def read_auth_file(path: Path) -> tuple[tuple[str, str], ...]:
    """The logins of an auth file: one `user:password` per line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Cannot read the auth file {path}: {getattr(exc, 'strerror', None) or exc}.") from exc
    return parse_auth_lines(text, f"The auth file {path}")


def auth_file_warning(path: Path) -> str | None:
    """A warning when others on this machine may read the auth file (its mode allows group or others)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & 0o077:
        return (f"warning: {path} can be read by other users of this machine (mode {mode & 0o777:o}); "
                f"`chmod 600 {path}` keeps the passwords to you.")
    return None


# Logins from the environment: one `user:password` per line (a process's environment is readable only by
# its user and root, unlike its command line, which `ps` shows to everyone).
AUTH_ENV = "RESI_AUTH"
AUTH_FLAG_REFUSED = (
    "--auth USER:PASSWORD is no longer accepted: a password on the command line is visible to every user "
    "of the machine (ps, /proc). Put user:password lines in a file only you can read (chmod 600) and pass "
    f"--auth-file FILE, or set {AUTH_ENV}=user:password (one login per line)."
)
