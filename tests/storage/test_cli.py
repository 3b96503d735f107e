"""`python -m train db ...`: upgrade, backup of a live database, restore, check, bad files."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from storage import repo
from storage.cli import main
from storage.db import make_engine, make_session_factory, verify_database
from storage.errors import InvalidInput
from storage.files import FileStore
from tests.storage.helpers import png_bytes


def _count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_upgrade_backup_restore_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "upgrade"]) == 0
    engine = make_engine(f"sqlite:///{data / 'resi.db'}")
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        repo.add_image(s, FileStore(data / "images"), project_id, png_bytes(8, 8), "a.png")

    stop = threading.Event()

    def write_projects() -> None:  # the backup runs while this writer commits
        i = 0
        while not stop.is_set():
            with sessions.begin() as s:
                repo.create_project(s, f"live {i}")
            i += 1

    writer = threading.Thread(target=write_projects)
    writer.start()
    try:
        assert main(["--data-dir", str(data), "backup", str(tmp_path / "backup.db")]) == 0
    finally:
        stop.set()
        writer.join()
    engine.dispose()
    backed_up = _count(tmp_path / "backup.db", "projects")
    assert backed_up >= 1 and _count(data / "resi.db", "projects") >= backed_up
    with sqlite3.connect(tmp_path / "backup.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    assert main(["--data-dir", str(data), "restore", str(tmp_path / "backup.db")]) == 1  # needs --force
    assert main(["--data-dir", str(data), "restore", str(tmp_path / "backup.db"), "--force"]) == 0
    assert _count(data / "resi.db", "projects") == backed_up
    assert main(["--data-dir", str(data), "check"]) == 0
    assert "database OK" in capsys.readouterr().out

    (next((data / "images").rglob("*/*"))).unlink()
    assert main(["--data-dir", str(data), "check"]) == 1
    assert "missing" in capsys.readouterr().err


def test_files_that_are_not_databases_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "resi.db").write_bytes(b"this is not a database, just text" * 100)
    for command in (["upgrade"], ["check"], ["backup", str(tmp_path / "b.db")]):
        assert main(["--data-dir", str(data), *command]) == 1
        assert "not a SQLite database" in capsys.readouterr().err
    assert (data / "resi.db").read_bytes().startswith(b"this is not")  # left alone
    with pytest.raises(InvalidInput, match="not a SQLite database"):
        verify_database(make_engine(f"sqlite:///{data / 'resi.db'}"))

    good = tmp_path / "good"
    assert main(["--data-dir", str(good), "upgrade"]) == 0
    assert main(["--data-dir", str(good), "restore", str(data / "resi.db"), "--force"]) == 1
    assert "not a SQLite database" in capsys.readouterr().err
    assert main(["--data-dir", str(good), "check"]) == 0


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert all(word in out for word in ("upgrade", "backup", "restore", "check"))


def test_projects_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.storage.helpers import segment

    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "projects"]) == 1
    assert "There is no database at" in capsys.readouterr().err
    assert not data.exists()  # a read-only command creates nothing
    assert main(["--data-dir", str(data), "upgrade"]) == 0
    assert main(["--data-dir", str(data), "projects"]) == 0
    assert "no projects yet" in capsys.readouterr().out
    engine = make_engine(f"sqlite:///{data / 'resi.db'}")
    with make_session_factory(engine).begin() as s:
        project = repo.create_project(s, "Street scenes")
        class_set = repo.set_class_set(s, project.id, ["street"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        store = FileStore(data / "images")
        for i in range(2):
            image, _ = repo.add_image(s, store, project.id, png_bytes(16, 12, seed=i), f"{i}.png")
            repo.save_proposal(s, image.id, model.id, class_set.id, [segment("a", 12, 16, (0, 0, 4, 4))], 1.0)
        repo.accept(s, image.id, 1, "ann")  # the second image only
    engine.dispose()
    assert main(["--data-dir", str(data), "projects"]) == 0
    assert "Street scenes: 0 new, 1 proposed, 0 in_review, 1 accepted" in capsys.readouterr().out

    out = tmp_path / "export"
    assert main(["--data-dir", str(data), "export", "--project", "Street scenes", "--out", str(out)]) == 0
    assert "exported 1 accepted image(s), 1 segment(s)" in capsys.readouterr().out
    instances = json.loads((out / "instances.json").read_text())
    [image] = instances["images"]
    assert (out / "images" / image["file_name"]).read_bytes() == png_bytes(16, 12, seed=1)
    assert (out / "panoptic" / "street.json").is_file()

    # Mistakes: one clear message each, and nothing is overwritten.
    assert main(["--data-dir", str(data), "export", "--project", "Street scenes", "--out", str(out)]) == 1
    assert "not an empty folder" in capsys.readouterr().err
    assert main(["--data-dir", str(data), "export", "--project", "nope", "--out", str(tmp_path / "x")]) == 1
    assert "no project named 'nope'" in capsys.readouterr().err


def test_prune_files_removes_only_files_no_image_uses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    assert main(["--data-dir", str(data), "upgrade"]) == 0
    engine = make_engine(f"sqlite:///{data / 'resi.db'}")
    store = FileStore(data / "images")
    with make_session_factory(engine).begin() as s:
        a = repo.create_project(s, "a").id
        b = repo.create_project(s, "b").id
        shared, _ = repo.add_image(s, store, a, png_bytes(8, 8, seed=1), "x.png")
        repo.add_image(s, store, b, png_bytes(8, 8, seed=1), "same bytes.png")
        gone, _ = repo.add_image(s, store, a, png_bytes(8, 8, seed=2), "y.png")
    with make_session_factory(engine).begin() as s:
        repo.delete_image(s, shared.id, 0)  # project b still uses these bytes
        repo.delete_image(s, gone.id, 0)
    engine.dispose()
    assert main(["--data-dir", str(data), "prune-files"]) == 0
    assert "1 unused image file(s)" in capsys.readouterr().out and store.exists(gone.sha256)
    assert main(["--data-dir", str(data), "prune-files", "--delete"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not store.exists(gone.sha256) and store.exists(shared.sha256)
    assert main(["--data-dir", str(data), "check"]) == 0
