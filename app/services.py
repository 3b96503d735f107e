"""What the handlers work with: config, database sessions, the image store and the lazily loaded model.

`open_services` is called once by launch.py (and by tests with a tmp data dir). Nothing here runs at
import time; the model and the text encoder load on first use, so the app starts in about a second
and still starts when the checkpoint is missing.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from app.config import AppConfig
from resi_core.labels import LabelSpace
from storage import db
from storage.files import FileStore, load_rgb, path_sha256


class UserError(Exception):
    """Something the user can fix; the message is shown as is, never a traceback."""


@dataclass(frozen=True)
class ModelInfo:
    """What the app needs to know about the loaded checkpoint."""

    name: str
    path: Path
    sha256: str
    label_spaces: tuple[LabelSpace, ...]
    text_encoder: str


class ModelProvider:
    """Loads the checkpoint and builds the predictor once, on first use, thread-safely."""

    def __init__(self, checkpoint: Path, text_encoder: str, device: str, cache_dir: Path):
        self.checkpoint = checkpoint
        self.text_encoder_spec = text_encoder
        self.device = device
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._predictor: Any = None
        self._info: ModelInfo | None = None
        self._encoder: Any = None

    def missing_message(self) -> str:
        return (
            f"No model checkpoint at {self.checkpoint}. Proposals need one: train the demo model with "
            "`python -m train demo` or start the app with --checkpoint PATH. Uploading, class sets, "
            "drawing segments by hand and accepting all work without it."
        )

    @property
    def available(self) -> bool:
        return self.checkpoint.exists()

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

    def predictor(self) -> Any:
        info = self.info()
        encoder = self.text_encoder()
        if info.text_encoder != encoder.id:
            # Checked before any weights load: class embeddings of different encoders are not comparable.
            raise UserError(
                f"The checkpoint {info.path} was trained with text encoder {info.text_encoder!r}, but the app "
                f"uses {encoder.id!r}. Restart the app with --text-encoder {info.text_encoder} (or pick a "
                "checkpoint trained with this encoder)."
            )
        with self._lock:
            if self._predictor is None:
                from resi_core.model import CheckpointError, load_checkpoint
                from resi_core.predictor import Predictor

                try:
                    model = load_checkpoint(info.path, text_encoder_id=encoder.id)
                except CheckpointError as exc:
                    raise UserError(f"Cannot load the model: {str(exc).rstrip('.')}. Proposals need a working checkpoint; "
                                    "everything else still works.") from exc
                self._predictor = Predictor(model, encoder, device=_torch_device(self.device))
            return self._predictor

    def info(self) -> ModelInfo:
        """The checkpoint's name, hash and label spaces, read from its metadata (the weights stay on disk)."""
        if not self.available:
            raise UserError(self.missing_message())
        with self._lock:
            if self._info is None:
                from resi_core.model import CheckpointError, read_meta

                try:
                    meta = read_meta(self.checkpoint)
                    spaces = tuple(LabelSpace.from_json(s) for s in meta["label_spaces"])
                    text_encoder = str(meta["text_encoder"])
                except CheckpointError as exc:
                    raise UserError(str(exc)) from exc
                except (KeyError, TypeError, ValueError) as exc:
                    raise UserError(f"The checkpoint {self.checkpoint} has invalid metadata: {exc!r}.") from exc
                self._info = ModelInfo(
                    name=self.checkpoint.name,
                    path=self.checkpoint,
                    sha256=path_sha256(self.checkpoint),
                    label_spaces=spaces,
                    text_encoder=text_encoder,
                )
            return self._info


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ImageCache:
    """Decoded RGB images by content hash (content never changes under a hash, so this is safe)."""

    def __init__(self, files: FileStore, capacity: int = 16):
        self.files = files
        self.capacity = capacity
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def rgb(self, sha256: str) -> np.ndarray:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
        array = np.asarray(load_rgb(self.files.read(sha256)))
        array.flags.writeable = False
        with self._lock:
            self._items[sha256] = array
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return array


@dataclass
class Services:
    config: AppConfig
    sessions: sessionmaker[Session]
    files: FileStore
    images: ImageCache
    model: ModelProvider
    # Serializes model registration so two users' first proposals don't both register it.
    register_lock: threading.Lock = field(default_factory=threading.Lock)


def open_services(config: AppConfig) -> Services:
    """Create the data dir, open (and migrate) the database, and set up the lazy model."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    url = config.database_url or db.database_url(config.data_dir)
    engine = db.make_engine(url)
    db.upgrade(engine)
    files = FileStore(config.image_dir)
    return Services(
        config=config,
        sessions=db.make_session_factory(engine),
        files=files,
        images=ImageCache(files),
        model=ModelProvider(config.checkpoint, config.text_encoder, config.device, config.data_dir / "cache"),
    )
