"""Start the RESI labeling app: `python launch.py [--data-dir DIR] [--port N] ...`.

The one place that wires config, database, image store, predictor and UI together. Everything runs
on this machine: no network access is needed, and by default the app only listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from app.config import (
    AUTH_ENV,
    AUTH_FLAG_REFUSED,
    DEFAULT_CHECKPOINT,
    DEFAULT_CLAIM_MINUTES,
    DEFAULT_DATA_DIR,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_TEXT_ENCODER,
    AppConfig,
    ConfigError,
    auth_file_warning,
    check_config,
    parse_auth_lines,
    read_auth_file,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python launch.py",
        description=(
            "Start the RESI labeling app in the browser. Projects, images and annotations are kept in "
            "--data-dir (a SQLite database and an image store) unless --database-url names another database."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"folder for the database and stored images (default ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--database-url", default=None,
                        help="SQLAlchemy URL of the database (default: SQLite file in --data-dir; "
                             "RESI_DATABASE_URL is read too)")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT,
                        help=f"RESI model checkpoint used for proposals (default {DEFAULT_CHECKPOINT})")
    parser.add_argument("--text-encoder", default=DEFAULT_TEXT_ENCODER,
                        help=f"text encoder for class names and synonym suggestions (default {DEFAULT_TEXT_ENCODER})")
    # Refused with a message saying why (the password would show in `ps`); not listed in --help.
    parser.add_argument("--auth", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--auth-file", type=Path, default=None,
                        help="require a login: a file with one user:password per line ('#' starts a comment); "
                        f"or set {AUTH_ENV} to such lines. Failed logins are throttled per user and per address")
    parser.add_argument("--max-upload-mb", type=int, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest file accepted by the upload (default {DEFAULT_MAX_UPLOAD_MB} MB)")
    parser.add_argument("--allow-unauthenticated-remote", action="store_true",
                        help="allow a non-loopback --host without logins (only on a trusted network)")
    parser.add_argument("--claim-minutes", type=float, default=DEFAULT_CLAIM_MINUTES,
                        help="how long an opened or edited image stays reserved for its user: Accept & next and "
                        f"Skip send other users to other images meanwhile (default {DEFAULT_CLAIM_MINUTES:g})")
    parser.add_argument("--device", default="auto", help="torch device for the model (default: cuda if present)")
    parser.add_argument("--model-threads", type=int, default=None,
                        help="CPU threads for the model's proposals (default: torch's choice, every core); fewer "
                        "leave cores to other work on a shared server")
    parser.add_argument("--model-process", action=argparse.BooleanOptionalAction, default=True,
                        help="run the model in a process of its own at a lower CPU priority, so that users' saves "
                        "never wait on proposals (default); --no-model-process runs it inside the app's process")
    parser.add_argument("--domain-aware", action="store_true",
                        help="on an image that looks like another label space's training data, a chosen space's "
                        "proposals need a score of 0.98 (default: off; it removes the masks of the space whose "
                        "data the image is not like, so person and face are not both proposed)")
    return parser


def config_from_args(args: argparse.Namespace) -> AppConfig:
    """Turn parsed arguments into an AppConfig; raise ConfigError on anything unusable."""
    if args.auth:
        raise ConfigError(AUTH_FLAG_REFUSED)
    auth: tuple[tuple[str, str], ...] = ()
    if args.auth_file is not None:
        auth += read_auth_file(args.auth_file)
    if os.environ.get(AUTH_ENV, "").strip():
        auth += parse_auth_lines(os.environ[AUTH_ENV], f"${AUTH_ENV}")
    config = AppConfig(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        database_url=args.database_url,
        checkpoint=args.checkpoint,
        text_encoder=args.text_encoder,
        auth=auth,
        allow_unauthenticated_remote=args.allow_unauthenticated_remote,
        max_upload_mb=args.max_upload_mb,
        device=args.device,
        model_threads=args.model_threads,
        model_process=args.model_process,
        claim_minutes=args.claim_minutes,
        out_of_domain_threshold=0.98 if args.domain_aware else None,
    )
    check_config(config)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.auth_file is not None and (warning := auth_file_warning(args.auth_file)):
        print(warning, file=sys.stderr)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event (for its
    # monitoring page): 2 ms per save early on, 7 ms once a day's events have piled up. Every 100 events
    # is often enough for a page a person reads.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "100")

    from app.services import open_services
    from app.ui import build_ui, launch_kwargs

    services = open_services(config)
    threading.Thread(target=services.model.warm_up, name="load-model", daemon=True).start()
    demo = build_ui(services)
    print(f"RESI data in {config.data_dir.resolve()}; model checkpoint {config.checkpoint}"
          + ("" if config.checkpoint.exists() else " (missing: Propose will say how to get one)"))
    _app, url, _share = demo.launch(**launch_kwargs(config), prevent_thread_lock=True)
    print(f"RESI is running at {url}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
        services.model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
