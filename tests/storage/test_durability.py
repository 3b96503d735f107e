"""SIGKILL a writer in the middle of saving corrections, many times; nothing returned is lost.

The writer is a forked child process (fast to start: the parent has already imported
everything) that saves 20-mask corrections in a loop and reports each version after its
commit returned. The parent kills it at a random moment, then checks SQLite's integrity, the
foreign keys, that every reported save is there, and that the stored annotation equals the
replay of its event history.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from storage import repo
from storage.db import make_engine, make_session_factory
from storage.errors import Correction
from storage.files import FileStore
from tests.storage.helpers import png_bytes, segment

H = W = 128
KILLS = 30


def _writer(url: str, image_id: int, report_fd: int, seed: int) -> None:
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(seed)
    while True:
        with sessions.begin() as s:
            ann = repo.current_annotation(s, image_id)
            n = rng.randint(1, 20)
            after = [segment(repo.new_segment_id(), H, W, (rng.randrange(64), rng.randrange(64), 64 + rng.randrange(64),
                                                           64 + rng.randrange(64)), rng.choice(["person", "car", "tree"]))
                     for _ in range(n)]
            kind = "edit" if ann.segments else "add"
            version = repo.apply_correction(s, image_id, ann.version, "writer",
                                            Correction(kind, [x.to_json() for x in ann.segments], after))
        os.write(report_fd, f"{version}\n".encode())


def _check(db_path: Path, image_id: int, min_version: int) -> int:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        (version,) = conn.execute("SELECT version FROM images WHERE id = ?", (image_id,)).fetchone()
        seqs = [r[0] for r in conn.execute("SELECT seq FROM annotation_events WHERE image_id = ? ORDER BY seq", (image_id,))]
        assert version >= min_version, "a save that returned was lost"
        assert seqs == list(range(1, version + 1)), "events and image version disagree"
        replay: dict[str, tuple] = {}
        for before, after in conn.execute("SELECT before, after FROM annotation_events WHERE image_id = ? ORDER BY seq",
                                          (image_id,)):
            for seg in json.loads(before):
                del replay[seg["id"]]
            for seg in json.loads(after):
                replay[seg["id"]] = (seg["class_name"], json.dumps(seg["rle"], separators=(",", ":")))
        stored = {uid: (name, rle) for uid, name, rle in
                  conn.execute("SELECT uid, class_name, rle FROM annotation_segments WHERE image_id = ?", (image_id,))}
        assert stored == replay, "current state differs from the replayed history"
        return version
    finally:
        conn.close()


@pytest.mark.slow
def test_sigkill_during_saves_loses_nothing(sqlite_template: Path, tmp_path: Path) -> None:
    db_path = tmp_path / "resi.db"
    db_path.write_bytes(sqlite_template.read_bytes())
    url = f"sqlite:///{db_path}"
    engine = make_engine(url)
    with make_session_factory(engine).begin() as s:
        project = repo.create_project(s, "p")
        image, _ = repo.add_image(s, FileStore(tmp_path / "images"), project.id, png_bytes(W, H), "a.png")
        image_id = image.id
    engine.dispose()  # no open SQLite connection may cross the fork

    rng = random.Random(1234)
    confirmed = 0
    for round_ in range(KILLS):
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: write until killed
            os.close(read_fd)
            try:
                _writer(url, image_id, write_fd, round_)
            finally:
                os._exit(1)
        os.close(write_fd)
        # Wait for this round's first save (so that every round makes progress, however
        # loaded the machine), then kill after a random extra delay: mid-save most times.
        reported = b""
        ready, _, _ = select.select([read_fd], [], [], 30)
        assert ready, "the writer saved nothing in 30 s"
        reported += os.read(read_fd, 65536)
        time.sleep(rng.uniform(0, 0.04))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        while chunk := os.read(read_fd, 65536):
            reported += chunk
        os.close(read_fd)
        versions = [int(line) for line in reported.decode().split()]
        confirmed = max([confirmed, *versions])
        confirmed = _check(db_path, image_id, confirmed)
    assert confirmed >= KILLS
