"""`python -m train db backup` mistakes against a running app: every one is refused, and no save is lost.

A real `python launch.py` serves a project while a client saves edits through its HTTP API in a loop.
Meanwhile the command line is run the way a user would mistype it: the live database (by name, through
a symlink, its -wal and -shm files) or a folder as the destination, with --force; a destination inside
the image store; a restore from the live database itself. Each must exit 1 with one message and no
traceback. A correct backup then works while saves go on and keeps the database's file mode. After the
app stops, `db check` passes and every save the app acknowledged is in the database.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.live_app import ROOT, Editor, live_app, seed_project


def _db(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`python -m train db ARGS` as a user runs it (from `cwd`)."""
    return subprocess.run([sys.executable, "-m", "train", "db", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_backup_mistakes_against_a_running_app_lose_no_save(tmp_path: Path) -> None:
    data = tmp_path / "data"
    [image_id] = seed_project(data, 1)
    db_file = data / "resi.db"
    os.chmod(db_file, 0o640)
    (tmp_path / "link.db").symlink_to(db_file)
    acknowledged: list[int] = []  # one entry per save the server answered without an error
    errors: list[BaseException] = []
    stop = threading.Event()

    with live_app(data) as app:
        editor = Editor(app.url, "live", image_id)

        def keep_saving() -> None:
            try:
                while not stop.is_set():
                    editor.save()
                    acknowledged.append(editor.saves)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                errors.append(exc)

        writer = threading.Thread(target=keep_saving)
        writer.start()
        try:
            while len(acknowledged) < 3 and not errors:
                time.sleep(0.1)
            at = ["--data-dir", str(data)]
            mistakes = {  # what: (arguments, folder it is typed in)
                "the live database": ([*at, "backup", str(db_file), "--force"], ROOT),
                "the live database, typed from the data folder": (["--data-dir", ".", "backup", "resi.db", "--force"],
                                                                  data),
                "its -wal file": ([*at, "backup", f"{db_file}-wal", "--force"], ROOT),
                "its -shm file": ([*at, "backup", f"{db_file}-shm", "--force"], ROOT),
                "a symlink to it": ([*at, "backup", str(tmp_path / "link.db"), "--force"], ROOT),
                "the data folder": ([*at, "backup", str(data), "--force"], ROOT),
                "inside the image store": ([*at, "backup", str(data / "images" / "backup.db"), "--force"], ROOT),
                "a restore from the live database": ([*at, "restore", str(db_file), "--force"], ROOT),
            }
            outcomes = {}
            for what, (args, cwd) in mistakes.items():
                result = _db(*args, cwd=cwd)
                outcomes[what] = (result.returncode, result.stderr.strip())
            saves_before_backup = len(acknowledged)
            good = _db("--data-dir", str(data), "backup", str(tmp_path / "backups" / "resi.db"))
            while len(acknowledged) < saves_before_backup + 3 and not errors:  # saves go on after it all
                time.sleep(0.1)
        finally:
            stop.set()
            writer.join(timeout=60)
    assert not errors, errors

    for what, (code, message) in outcomes.items():
        assert code == 1, (what, message)
        assert message.startswith("error: ") and "\n" not in message and "Traceback" not in message, (what, message)
    assert "live database" in outcomes["the live database"][1]
    assert "is a folder" in outcomes["the data folder"][1]
    assert "which the app manages" in outcomes["inside the image store"][1]
    assert "is the database itself" in outcomes["a restore from the live database"][1]

    assert good.returncode == 0, good.stderr
    backup = tmp_path / "backups" / "resi.db"
    assert oct(backup.stat().st_mode & 0o777) == oct(0o640)
    assert _db("--data-dir", str(data), "--url", f"sqlite:///{backup}", "check").returncode == 0

    check = _db("--data-dir", str(data), "check")
    assert check.returncode == 0, check.stderr
    with sqlite3.connect(db_file) as conn:
        (version,) = conn.execute("SELECT version FROM images WHERE id = ?", (image_id,)).fetchone()
        (relabels,) = conn.execute("SELECT count(*) FROM annotation_events WHERE image_id = ? AND "
                                   "event_type = 'relabel'", (image_id,)).fetchone()
    # Only this client saved: every acknowledged save is an event (a save in flight when it stopped may be too).
    assert len(acknowledged) >= 6
    assert relabels in (len(acknowledged), len(acknowledged) + 1)
    assert version == 1 + relabels  # the seeded segment was version 1
