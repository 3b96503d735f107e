"""Images and masks built by hand for the storage tests, and other writers holding the database's lock."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from storage.db import sqlite_path


def png_bytes(width: int = 64, height: int = 48, seed: int = 0, fmt: str = "PNG", exif_orientation: int | None = None) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    img = PILImage.fromarray(pixels)
    buf = io.BytesIO()
    if exif_orientation is not None:
        exif = PILImage.Exif()
        exif[0x0112] = exif_orientation
        img.save(buf, format="JPEG", exif=exif.tobytes())
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


def rle_box(height: int, width: int, y0: int, x0: int, y1: int, x1: int) -> dict:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def segment(seg_id: str, height: int, width: int, box: tuple[int, int, int, int], class_name: str = "person",
            label_space: str = "street", score: float | None = 0.9, isthing: bool = True) -> dict:
    return {"id": seg_id, "class_name": class_name, "label_space": label_space, "isthing": isthing,
            "score": score, "rle": rle_box(height, width, *box)}


@contextlib.contextmanager
def another_writer_holding_the_lock(sessions: sessionmaker[Session], write: Callable[[Session], object]
                                     ) -> Iterator[None]:
    """While the body runs, another thread has just done `write` and holds SQLite's write lock for
    half a second before it commits."""
    holding = threading.Event()

    def other_writer() -> None:
        with sessions.begin() as s:
            write(s)
            holding.set()
            time.sleep(0.5)  # commits while the body is under way

    other = threading.Thread(target=other_writer)
    other.start()
    holding.wait(5)
    try:
        yield
    finally:
        other.join()


HOLD_S = 1.0
PG_TABLES = "projects, class_sets, model_versions, images, proposals, annotation_events, annotation_segments, " \
            "piq_records, jobs"


@contextlib.contextmanager
def lock_held(url: str, seconds: float = HOLD_S) -> Iterator[dict[str, float]]:
    """Another connection takes the write lock (and, on SQLite, writes a row), holds it `seconds`, then
    commits. Yields once the lock is held; `times["released"]` is when it committed."""
    held, times = threading.Event(), {}
    path = sqlite_path(url)

    def holder() -> None:
        if path is not None:
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO projects (name, created_at) VALUES ('the other writer', '2026-01-01')")
            held.set()
            time.sleep(seconds)
            times["released"] = time.monotonic()
            conn.execute("COMMIT")
            conn.close()
            return
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"LOCK TABLE {PG_TABLES} IN EXCLUSIVE MODE"))
            held.set()
            time.sleep(seconds)
            times["released"] = time.monotonic()
        engine.dispose()

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10), "the other writer never got the lock"
    try:
        yield times
    finally:
        thread.join()
