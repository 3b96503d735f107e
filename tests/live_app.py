"""A real `python launch.py` server in a subprocess, and clients that save edits through its HTTP API.

Used by the tests that make mistakes against a running app (tests/storage/test_backup_live.py) and by
scripts/bench_load.py. The data (project, class set, images, one segment per image) is written with
storage before the server starts; the clients then open the project and an image and relabel that
segment back and forth through gradio_client, the way a browser's clicks reach the handlers.
"""

from __future__ import annotations

import io
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
_TLS_CONTEXT = ssl.create_default_context()
CLASSES = ("cat", "dog")  # ad-hoc classes: no model is needed to relabel between them
SEGMENT_ID = "seg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(seed: int, size: int = 64) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, size=(size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def seed_project(data_dir: Path, n_images: int, name: str = "live", photos: list[Path] | None = None,
                 segments: int = 1) -> list[int]:
    """A project with an ad-hoc class set and `n_images` images; their ids. Each image holds a 'cat' segment
    (id SEGMENT_ID) and `segments - 1` more boxes. The images are 64x64 noise, or `photos` (cycled)."""
    from pycocotools import mask as mask_utils

    from storage import repo
    from storage.db import make_engine, make_session_factory, upgrade
    from storage.errors import Correction
    from storage.files import FileStore

    engine = make_engine(f"sqlite:///{(data_dir / 'resi.db').resolve()}")
    upgrade(engine)
    store = FileStore(data_dir / "images")
    ids = []
    with make_session_factory(engine).begin() as s:
        project = repo.create_project(s, name)
        repo.set_class_set(s, project.id, [], list(CLASSES))
        for i in range(n_images):
            data = photos[i % len(photos)].read_bytes() if photos else _png(i)
            image, duplicate = repo.add_image(s, store, project.id, data, f"{i}.png")
            if duplicate:
                raise ValueError(f"image {i} is a duplicate: give at least {n_images} photos")
            h, w = image.height, image.width
            added = []
            for k in range(segments):
                mask = np.zeros((h, w), dtype=np.uint8)
                top, left = (k * h) // (2 * segments), (k * w) // (2 * segments)
                mask[top:top + h // 2, left:left + w // 2] = 1
                rle = mask_utils.encode(np.asfortranarray(mask))
                added.append({"id": SEGMENT_ID if k == 0 else f"box{k}", "class_name": CLASSES[k % 2],
                              "label_space": "adhoc", "isthing": True, "score": None,
                              "rle": {"size": [h, w], "counts": rle["counts"].decode("ascii")}})
            repo.apply_correction(s, image.id, 0, "setup", Correction("add", [], added))
            ids.append(image.id)
    engine.dispose()
    return ids


@dataclass
class LiveApp:
    url: str
    process: subprocess.Popen[str]
    data_dir: Path
    log: list[str]


@contextmanager
def live_app(data_dir: Path, *extra: str, timeout_s: float = 180, env: dict[str, str] | None = None,
             checkpoint: Path | None = None) -> Iterator[LiveApp]:
    """`python launch.py --data-dir DATA_DIR` on a free port, stopped after. No checkpoint unless one is
    given (it is not needed to save edits). `env`: more environment variables for it."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           **(env or {})}
    command = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--data-dir", str(data_dir),
               "--checkpoint", str(checkpoint or data_dir / "no-checkpoint"), *extra]
    process = subprocess.Popen(command, cwd=data_dir.parent, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = process.stdout.readline() if process.stdout else ""
            if not line and process.poll() is not None:
                break
            log.append(line)
            if "RESI is running at" in line:
                break
        else:
            raise TimeoutError("the app did not start in time:\n" + "".join(log))
        if process.poll() is not None:
            raise RuntimeError("the app stopped:\n" + "".join(log))
        # Keep reading what it prints, so that a full pipe never blocks the server.
        threading.Thread(target=lambda: log.extend(iter(process.stdout.readline, "")), daemon=True).start()
        yield LiveApp(f"http://127.0.0.1:{port}/", process, data_dir, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Editor:
    """One user's browser session: opens the project and an image, then relabels its segment; each
    `save()` returns only once the server acknowledged the save (an error raises)."""

    def __init__(self, url: str, project: str, image_id: int, **client_kwargs: Any):
        from gradio_client import Client

        # Not downloading the images each save returns (a browser fetches them on its own machine; here
        # the client would take CPU from the server it measures).
        client_kwargs.setdefault("download_files", False)
        # One TLS context for every request: given a bool, gradio_client's httpx calls build a new one per
        # request, loading the CA bundle each time (about half of a client's CPU per save; a browser loads
        # it once). Still a verifying context; the app here is plain HTTP on loopback anyway.
        client_kwargs.setdefault("ssl_verify", _TLS_CONTEXT)
        self.client = Client(url, verbose=False, **client_kwargs)
        self.image_id = image_id
        self.client.predict(project, api_name="/open_project")
        self.client.predict(image_id, api_name="/open_image")
        self.client.predict(SEGMENT_ID, api_name="/select_segment")
        self.saves = 0

    def save(self) -> None:
        """Relabel the segment to the other class: one saved correction."""
        label = f"{CLASSES[(self.saves + 1) % 2]} [adhoc]"
        self.client.predict(label, api_name="/relabel")
        self.saves += 1
