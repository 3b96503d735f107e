"""Fixtures of the train/ tests that read or write a project: offline, and a tiny untrained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import RESIConfig, build_model, save_checkpoint
from resi_core.text import get_text_encoder
from storage.db import default_sqlite_url, make_engine, make_session_factory, upgrade
from storage.files import FileStore
from tests.resi_core.test_model_data import TINY_SPACES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("RESI_DATABASE_URL", raising=False)


@pytest.fixture(scope="module")
def encoder():
    return get_text_encoder("minilm")


@pytest.fixture(scope="module")
def base(tmp_path_factory, encoder) -> Path:
    """An untrained tiny RESI checkpoint with the label spaces street and portrait."""
    config = RESIConfig.from_json(json.loads((ROOT / "configs" / "world_tiny.json").read_text())["model"])
    spaces = [LabelSpace(name, tuple(ClassDef(c, t) for c, t in classes)) for name, classes in TINY_SPACES.items()]
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("base") / "base", build_model(config, spaces, encoder), {"tiny": 1})


def project_database(data_dir: Path):
    """A migrated SQLite database in `data_dir`: (engine, sessions, image store); dispose the engine."""
    engine = make_engine(default_sqlite_url(data_dir))
    upgrade(engine)
    return engine, make_session_factory(engine), FileStore(data_dir / "images")
