"""Every `python -m train` command given the mistakes users make: one message, a non-zero exit, no traceback.

The commands run in-process through `train.__main__.main` (an exception escaping would be the traceback a
user sees), plus one real subprocess per family to be sure. Read-only commands given a mistyped data
directory must leave no file behind. A checkpoint's meta.json naming a pickle file or a pretrained tag as
its text encoder is refused before anything is unpickled or any connection is attempted.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage import repo
from storage.db import make_engine, make_session_factory, upgrade
from train.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "checkpoints" / "demo"


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    """Run `python -m train ARGV` in-process: non-zero exit, an 'error:' message holding `expected`."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), (argv, err)
    last = err.strip().splitlines()[-1]
    assert ("error:" in last or last.startswith("problem:")) and "Traceback" not in err, err
    for text in expected:
        assert text in last, (text, last)
    return last


def _database(folder: Path, projects: int = 0) -> Path:
    engine = make_engine(f"sqlite:///{folder / 'resi.db'}")
    upgrade(engine)
    with make_session_factory(engine).begin() as s:
        for i in range(projects):
            repo.create_project(s, f"project {i} " + "x" * 60)
    engine.dispose()
    return folder / "resi.db"


def _damage(db_file: Path, keep_header_pages: int = 3) -> None:
    """Overwrite two pages after the first few with a fixed byte pattern (a disk that lost writes)."""
    data = bytearray(db_file.read_bytes())
    page = 4096
    start = page * keep_header_pages
    data[start:start + 2 * page] = np.random.default_rng(0).integers(0, 256, 2 * page, dtype=np.uint8).tobytes()
    db_file.write_bytes(bytes(data))


def test_db_check_on_a_damaged_database_is_one_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, damage in (("pages", _damage), ("truncated", lambda f: f.write_bytes(f.read_bytes()[:20000]))):
        data = tmp_path / name
        db_file = _database(data, projects=300)
        damage(db_file)
        for command in (["check"], ["projects"], ["backup", str(tmp_path / f"{name}.db")]):
            _fails(["db", "--data-dir", str(data), *command], capsys, "damaged", "db restore BACKUP --force")
        assert not (tmp_path / f"{name}.db").exists()


def test_db_restore_replaces_a_damaged_database_and_keeps_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good"
    _database(good, projects=3)
    assert main(["db", "--data-dir", str(good), "backup", str(tmp_path / "backup.db")]) == 0
    data = tmp_path / "data"
    db_file = _database(data, projects=300)
    db_file.write_bytes(db_file.read_bytes()[:20000])  # SQLite cannot even open it for the backup API
    damaged = db_file.read_bytes()
    assert main(["db", "--data-dir", str(data), "restore", str(tmp_path / "backup.db"), "--force"]) == 0
    out = capsys.readouterr().out
    assert "the damaged database was moved to" in out
    [kept] = data.glob("resi.db.damaged-*")
    assert kept.read_bytes() == damaged  # nothing the user had is deleted
    assert main(["db", "--data-dir", str(data), "projects"]) == 0
    assert capsys.readouterr().out.count("project ") == 3


def test_db_backup_destinations_that_would_destroy_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    db_file = _database(data, projects=2)
    os.chmod(db_file, 0o640)
    (data / "images").mkdir()
    before = db_file.read_bytes()
    at = ["db", "--data-dir", str(data)]
    _fails([*at, "backup", str(tmp_path), "--force"], capsys, "is a folder")
    _fails([*at, "backup", str(db_file), "--force"], capsys, "live database")
    _fails([*at, "backup", f"{db_file}-wal", "--force"], capsys, "file of the live database")
    _fails([*at, "backup", str(data / "images" / "b.db"), "--force"], capsys, "which the app manages")
    (tmp_path / "a file").write_text("x")
    _fails([*at, "backup", str(tmp_path / "a file" / "b.db")], capsys, "is a file")
    _fails([*at, "restore", str(db_file), "--force"], capsys, "is the database itself")
    _fails([*at, "restore", str(tmp_path), "--force"], capsys, "is a folder")
    assert db_file.read_bytes() == before
    assert main([*at, "backup", str(tmp_path / "b" / "resi.db")]) == 0
    assert (tmp_path / "b" / "resi.db").stat().st_mode & 0o777 == 0o640  # as private as the database


def test_read_only_commands_with_a_mistyped_data_dir_create_nothing(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "resi-dta"
    empty = tmp_path / "empty"
    empty.mkdir()
    db_file = _database(tmp_path / "real")
    for folder in (typo, empty):
        for command in (["check"], ["projects"], ["prune-files"], ["export", "--project", "p", "--out",
                                                                   str(tmp_path / "out")],
                        ["backup", str(tmp_path / "b.db")]):
            _fails(["db", "--data-dir", str(folder), *command], capsys, "There is no database at")
    assert not typo.exists() and list(empty.iterdir()) == []
    assert not (tmp_path / "out").exists() and not (tmp_path / "b.db").exists()
    _fails(["db", "--data-dir", str(db_file), "projects"], capsys, "--data-dir is the folder that holds resi.db")
    _fails(["db", "--url", "sqlite-ish:/x", "projects"], capsys, "not a database URL")
    _fails(["finetune", "--checkpoint", str(DEMO), "--space", "signs", "--project", "p", "--data-dir", str(typo),
            "--out", str(tmp_path / "ft")], capsys, "There is no database at")
    assert not typo.exists() and not (tmp_path / "ft").exists()


class _Tripwire:
    """Unpickling this runs `Path.touch` on its path: whoever unpickles it leaves a file behind."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every attempt to open a connection is recorded and refused."""
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


def _checkpoint_with_encoder(tmp_path: Path, name: str, spec: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(DEMO, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["text_encoder"] = meta["config"]["text_encoder"] = spec
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_finetune_refuses_a_text_encoder_that_needs_unpickling_or_the_network(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_network: list[object]) -> None:
    marker = tmp_path / "unpickled"
    evil = tmp_path / "clip.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Tripwire(marker)}))
    instances = tmp_path / "signs.json"
    instances.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "sign"}]}))
    data = ["--space", "signs", "--instances", str(instances), "--images", str(tmp_path), "--iterations", "1"]
    cases = {
        f"open_clip:ViT-B-32:{evil}": "pickle formats",
        "open_clip:ViT-B-32:openai": "would be downloaded",
        "open_clip:hf-hub:someone/clip": "never downloads",
        "open_clip:ViT-B-32": "names no weights",
        "open_clip:NoSuchArch:x.safetensors": "no architecture",
        f"open_clip:local-dir:{tmp_path / 'nowhere'}": "does not exist",
        "word2vec": "Unknown text encoder",
    }
    for i, (spec, expected) in enumerate(cases.items()):
        checkpoint = _checkpoint_with_encoder(tmp_path, f"ck{i}", spec)
        _fails(["finetune", "--checkpoint", str(checkpoint), *data, "--out", str(tmp_path / f"out{i}")], capsys,
               "meta.json names the text encoder", expected)
        assert not (tmp_path / f"out{i}").exists()
    assert not marker.exists() and no_network == []


def test_finetune_with_a_damaged_meta_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = tmp_path / "ck"
    shutil.copytree(DEMO, checkpoint)
    meta = json.loads((checkpoint / "meta.json").read_text())
    del meta["label_spaces"]
    (checkpoint / "meta.json").write_text(json.dumps(meta))
    _fails(["finetune", "--checkpoint", str(checkpoint), "--space", "signs", "--instances", str(tmp_path / "x.json"),
            "--images", str(tmp_path), "--out", str(tmp_path / "out")], capsys, "is damaged", "label_spaces")


def test_config_files_that_are_not_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    _fails(["pretrain", "--config", str(bad)], capsys, "config.json is not valid JSON")
    _fails(["domain-head", "--checkpoint", str(DEMO), "--config", str(bad)], capsys, "config.json is not valid JSON")
    _fails(["domain-head", "--checkpoint", str(DEMO), "--config", str(bad), "--threads", "0"], capsys,
           "--threads must be at least 1")
    _fails(["prelabel", "--project", "Streets", "--data-dir", str(tmp_path), "--threads", "-1"], capsys,
           "--threads must be at least 1")
    _fails(["pretrain", "--config", str(ROOT / "configs" / "world_tiny.json"), "--out", str(tmp_path / "run"),
            "--threads", "-1"], capsys, "--threads must be at least 1")
    _fails(["evaluate", "--gt", str(bad), "--pred", str(bad)], capsys, "not valid JSON")
    _fails(["pretrain", "--config", str(tmp_path)], capsys)  # a folder
    assert main(["nonsense"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown command 'nonsense'")


@pytest.mark.slow
def test_as_a_user_runs_them(tmp_path: Path) -> None:
    """The same mistakes through a real `python -m train` process: the message is the last line, no traceback."""
    checkpoint = _checkpoint_with_encoder(tmp_path, "ck", "open_clip:ViT-B-32:openai")
    data = tmp_path / "data"
    db_file = _database(data, projects=300)
    _damage(db_file)
    runs = [
        ["db", "--data-dir", str(data), "check"],
        ["db", "--data-dir", str(data), "backup", str(tmp_path), "--force"],
        ["db", "--data-dir", str(tmp_path / "typo"), "projects"],
        ["finetune", "--checkpoint", str(checkpoint), "--space", "s", "--instances", str(tmp_path / "i.json"),
         "--images", str(tmp_path), "--out", str(tmp_path / "out")],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for argv in runs:
        result = subprocess.run([sys.executable, "-m", "train", *argv], cwd=ROOT, capture_output=True, text=True,
                                timeout=300, env=env)
        assert result.returncode != 0 and "Traceback" not in result.stderr, (argv, result.stderr)
        assert result.stderr.strip().splitlines()[-1].startswith(("error: ", "problem: ")), result.stderr
    assert not (tmp_path / "typo").exists()
