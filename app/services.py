"""What the handlers work with: config, database sessions, the image store, the lazily loaded models
and the job subprocesses this app started.

`open_services` is called once by launch.py (and by tests with a tmp data dir). Nothing here runs at
import time; the model and the text encoder load on first use, so the app starts in about a second
and still starts when the checkpoint is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import numpy as np
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.config import AppConfig
from formats.images import decode_image
from formats.rle import RLE, decode_rle
from resi_core.labels import LabelSpace
from storage import db
from storage.files import FileStore, path_sha256

K = TypeVar("K")

if TYPE_CHECKING:
    from resi_core.predictor import Request
    from resi_core.segment import Segment


class UserError(Exception):
    """Something the user can fix; the message is shown as is, never a traceback."""


@dataclass(frozen=True)
class ModelInfo:
    """What the app needs to know about a checkpoint, from its metadata (the weights stay on disk)."""

    name: str
    path: Path
    sha256: str
    label_spaces: tuple[LabelSpace, ...]
    text_encoder: str
    # Label spaces added by fine-tuning -> the trained space whose images theirs look like (domain-aware OMI).
    space_domains: dict[str, str] = field(default_factory=dict)


class Proposal(Protocol):
    """What the app reads of a prediction (`resi_core.predictor.Prediction`)."""

    @property
    def segments(self) -> list[Segment]: ...

    @property
    def domain_probs(self) -> dict[str, float]: ...

    @property
    def out_of_domain(self) -> tuple[str, ...]: ...

    @property
    def unfamiliar(self) -> bool: ...

    @property
    def notice(self) -> str: ...


class Proposer(Protocol):
    """What the app asks of a predictor: `resi_core.predictor.Predictor`, and the tests' fake."""

    @property
    def label_spaces(self) -> dict[str, LabelSpace]: ...

    def predict(self, image: np.ndarray, request: Request, *, with_instances: bool = True) -> Proposal: ...

    def clear_cache(self) -> None: ...


class ModelProvider:
    """Loads checkpoints and builds their predictors on first use, thread-safely.

    `checkpoint` is the app's model (--checkpoint). A project whose active model version is a fine-tuned
    one uses that version's checkpoint instead: the handlers pass it as `checkpoint`, and the provider
    loads it when it differs from those loaded. Metadata stays cached per checkpoint; the predictors of
    the `capacity` most recently used checkpoints stay loaded, so projects on different models do not
    reload on every proposal.
    """

    def __init__(self, checkpoint: Path, text_encoder: str, device: str, cache_dir: Path, capacity: int = 2,
                 out_of_domain_threshold: float | None = None, threads: int | None = None,
                 process: bool = False):
        self.checkpoint = checkpoint
        self.threads = threads
        # Run the model in a process of its own (app/model_worker.py); False: in this one.
        self.process = process
        self.text_encoder_spec = text_encoder
        self.device = device
        self.out_of_domain_threshold = out_of_domain_threshold
        self.cache_dir = cache_dir
        self.capacity = capacity
        self._lock = threading.Lock()
        self._predictors: OrderedDict[Path, Proposer] = OrderedDict()
        self._infos: dict[Path, ModelInfo] = {}
        self._encoder: Any = None

    def missing_message(self) -> str:
        return (
            f"No model checkpoint at {self.checkpoint}. Proposals need one: restore the committed demo with "
            "`git checkout -- checkpoints/demo`, train one with `python -m train pretrain --config "
            "configs/world_demo.json` (README.md), or start the app with --checkpoint PATH. Uploading, class "
            "sets, drawing segments by hand and accepting all work without it."
        )

    @property
    def available(self) -> bool:
        """Whether the app's own checkpoint is there."""
        return self.exists()

    def exists(self, checkpoint: Path | None = None) -> bool:
        return (checkpoint or self.checkpoint).exists()

    def text_encoder(self) -> Any:
        """The text encoder for synonym suggestions (the model's own one once it is loaded)."""
        with self._lock:
            if self._encoder is None:
                from resi_core.text import TextEncoderError, get_text_encoder

                try:
                    self._encoder = get_text_encoder(self.text_encoder_spec, cache_dir=self.cache_dir)
                except TextEncoderError as exc:
                    raise UserError(f"{exc} (set it with --text-encoder).") from exc
            return self._encoder

    def predictor(self, checkpoint: Path | None = None) -> Proposer:
        """The predictor of `checkpoint` (default: the app's), loaded on first use."""
        info = self.info(checkpoint)
        encoder = self.text_encoder()
        if info.text_encoder != encoder.id:
            # Checked before any weights load: class embeddings of different encoders are not comparable.
            raise UserError(
                f"The checkpoint {info.path} was trained with text encoder {info.text_encoder!r}, but the app "
                f"uses {encoder.id!r}. Restart the app with --text-encoder {info.text_encoder} (or pick a "
                "checkpoint trained with this encoder)."
            )
        key = _key(info.path)
        with self._lock:
            if getattr(self._predictors.get(key), "stopped", False):  # its process died: start another
                del self._predictors[key]
            if key not in self._predictors:
                self._predictors[key] = self._load(info.path, encoder)
                while len(self._predictors) > self.capacity:  # a thread still using an evicted one keeps it
                    _, evicted = self._predictors.popitem(last=False)
                    if hasattr(evicted, "close"):  # a model process: it stops once its call in flight ends
                        threading.Thread(target=evicted.close, daemon=True).start()
            self._predictors.move_to_end(key)
            return self._predictors[key]

    def _load(self, path: Path, encoder: Any) -> Proposer:
        if self.process and os.name == "posix":  # the child inherits its socket by descriptor (pass_fds)
            from app.model_worker import WorkerError, WorkerProposer, WorkerSpec

            spec = WorkerSpec(str(path), self.text_encoder_spec, self.device, str(self.cache_dir),
                              self.out_of_domain_threshold, self.threads)
            try:
                return WorkerProposer.start(spec)
            except WorkerError as exc:
                raise UserError(f"Cannot load the model: {exc}. Proposals need a working checkpoint; "
                                "everything else still works.") from exc
        import torch

        from resi_core.model import CheckpointError, load_checkpoint
        from resi_core.predictor import Predictor

        if self.threads is not None:  # the process's intra-op pool: the model is its one user
            torch.set_num_threads(self.threads)
        try:
            model = load_checkpoint(path, text_encoder_id=encoder.id)
        except CheckpointError as exc:
            raise UserError(f"Cannot load the model: {str(exc).rstrip('.')}. Proposals need a working checkpoint; "
                            "everything else still works.") from exc
        return Predictor(model, encoder, device=torch_device(self.device),
                         out_of_domain_threshold=self.out_of_domain_threshold)

    def close(self) -> None:
        """Stop the model processes (the app's shutdown; they also stop by themselves when it dies)."""
        with self._lock:
            for predictor in self._predictors.values():
                if hasattr(predictor, "close"):
                    predictor.close()

    def warm_up(self) -> None:
        """Load the app's checkpoint now (launch.py calls this in the background), so the first proposal
        does not wait seconds for it; a missing or broken checkpoint is left for Propose to explain."""
        if self.available:
            try:
                self.predictor()
            except UserError:
                pass

    def info(self, checkpoint: Path | None = None) -> ModelInfo:
        """A checkpoint's name, hash and label spaces (default: the app's), read from its metadata; the
        weights stay on disk."""
        path = checkpoint or self.checkpoint
        if not self.exists(path):
            raise UserError(self.missing_message() if path == self.checkpoint else (
                f"The project's active model checkpoint {path} is missing. Pick another model on the Fine-tune "
                "tab; everything but proposals works without one."))
        key = _key(path)
        with self._lock:
            if key not in self._infos:
                from resi_core.model import CheckpointError, read_meta

                try:
                    meta = read_meta(path)
                    spaces = tuple(LabelSpace.from_json(s) for s in meta["label_spaces"])
                    text_encoder = str(meta["text_encoder"])
                    space_domains = {str(k): str(v) for k, v in (meta.get("space_domains") or {}).items()}
                except CheckpointError as exc:
                    raise UserError(str(exc)) from exc
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise UserError(f"The checkpoint {path} has invalid metadata: {exc!r}.") from exc
                self._infos[key] = ModelInfo(
                    name=path.name,
                    path=path,
                    sha256=path_sha256(path),
                    label_spaces=spaces,
                    text_encoder=text_encoder,
                    space_domains=space_domains,
                )
            return self._infos[key]


def _key(checkpoint: Path) -> Path:
    return checkpoint.resolve()


def torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"

# Decoded photos kept in memory for the Label tab: about 20 twelve-megapixel photos, or 800 of 640x480.
IMAGE_CACHE_BYTES = 768 * 2**20
# Decoded masks (one byte a pixel): every event of the Label tab shows the open image's segments, and an edit
# changes one of them at most.
MASK_CACHE_BYTES = 256 * 2**20


class ArrayCache(Generic[K]):
    """Arrays made by `make(key)` from content that never changes under its key, read-only (shared between
    requests), the most recently used kept up to `budget_bytes` in all (the newest one always). Sized by
    bytes, not by count: with more annotators than a count allowed, each on their own image, every save
    decoded its photo again (an LRU cycled through by more users than it holds misses every time)."""

    def __init__(self, make: Callable[[K], np.ndarray], budget_bytes: int):
        self.make = make
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[K, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> np.ndarray:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        array = self.make(key)
        array.flags.writeable = False
        with self._lock:
            if key not in self._items:
                self._items[key] = array
                self._bytes += array.nbytes
            while self._bytes > self.budget_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes
        return array


class ImageCache(ArrayCache[str]):
    """Decoded RGB images by content hash."""

    def __init__(self, files: FileStore, budget_bytes: int = IMAGE_CACHE_BYTES):
        super().__init__(lambda sha256: decode_image(files.read(sha256)), budget_bytes)

    def rgb(self, sha256: str) -> np.ndarray:
        return self.get(sha256)


class MaskCache(ArrayCache[tuple[str, int, int]]):
    """Decoded masks by their RLE (counts, height, width): bool [H, W], read-only."""

    def __init__(self, budget_bytes: int = MASK_CACHE_BYTES):
        super().__init__(lambda key: decode_rle({"counts": key[0], "size": [key[1], key[2]]}), budget_bytes)

    def mask(self, rle: RLE) -> np.ndarray:
        height, width = rle["size"]
        return self.get((rle["counts"], int(height), int(width)))


@dataclass(frozen=True)
class ProcessState:
    """What is known about a job's process: alive, or gone with its exit code (None: not our child)."""

    alive: bool
    returncode: int | None = None


class JobProcesses:
    """The `python -m train ...` subprocesses this app started. Polling them notices (and reaps) the ones
    that ended; a job started by an earlier run of the app is checked through its recorded pid."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, subprocess.Popen[bytes]] = {}
        self._exit_codes: dict[int, int] = {}  # of started ones that ended (and were reaped)

    def start(self, job_id: int, command: Sequence[str], cwd: Path, env: dict[str, str], log: Path) -> int:
        """Start `command` detached (own session: stopping the app does not stop it), output to `log`."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        with self._lock:
            self._started[job_id] = process
        return process.pid

    def stop(self, job_id: int, pid: int | None) -> bool:
        """Send SIGTERM to a job's process group (its own session: the job and anything it started).
        False when there is nothing to stop."""
        with self._lock:
            process = self._started.get(job_id)
        target = process.pid if process is not None else pid
        if target is None:
            return False
        try:
            os.killpg(target, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):  # gone already, or not ours to stop
            return False
        return True

    def reap(self) -> None:
        """Collect the exit codes of the started processes that ended (no zombies are left behind)."""
        with self._lock:
            for job_id, process in list(self._started.items()):
                code = process.poll()
                if code is not None:
                    self._exit_codes[job_id] = code
                    del self._started[job_id]

    def state(self, job_id: int, pid: int | None) -> ProcessState | None:
        """None when nothing is known: not started here and no pid recorded yet."""
        self.reap()
        with self._lock:
            if job_id in self._started:
                return ProcessState(alive=True)
            if job_id in self._exit_codes:
                return ProcessState(alive=False, returncode=self._exit_codes[job_id])
        if pid is None:
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return ProcessState(alive=False)
        except PermissionError:  # someone else's process by that id: alive
            pass
        return ProcessState(alive=True)


@dataclass
class Services:
    config: AppConfig
    sessions: sessionmaker[Session]
    files: FileStore
    images: ImageCache
    model: ModelProvider
    jobs: JobProcesses = field(default_factory=JobProcesses)
    masks: MaskCache = field(default_factory=MaskCache)


def database_url(config: AppConfig) -> str:
    """The app's database URL; a SQLite path is made absolute, as job subprocesses run in another folder."""
    url = config.database_url or db.database_url(config.data_dir)
    path = db.sqlite_path(url)
    if path is not None and not path.is_absolute():
        url = make_url(url).set(database=str(path.resolve())).render_as_string(hide_password=False)
    return url


def open_services(config: AppConfig) -> Services:
    """Create the data dir, open (and migrate) the database, and set up the lazy model."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    url = database_url(config)
    engine = db.make_engine(url)
    db.upgrade(engine)
    files = FileStore(config.image_dir)
    return Services(
        config=config,
        sessions=db.make_session_factory(engine),
        files=files,
        images=ImageCache(files),
        model=ModelProvider(config.checkpoint, config.text_encoder, config.device, config.data_dir / "cache",
                            out_of_domain_threshold=config.out_of_domain_threshold, threads=config.model_threads,
                            process=config.model_process),
    )
