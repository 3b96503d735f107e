"""Fixtures for the app tests: services on a tmp data dir with a fake model (no torch weights needed)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from app.class_sets.handlers import save_class_set
from app.config import AppConfig
from app.context import UserState
from app.projects.handlers import create_project
from app.projects.upload import upload_images
from app.services import ModelInfo, ModelProvider, Services, open_services
from resi_core.labels import ClassDef, LabelSpace
from resi_core.predictor import AdHocRequest, MixedRequest, Request, RequestError
from resi_core.segment import Segment, Source
from tests.shared_data import coco128_photos

STREET = LabelSpace("street", (ClassDef("person"), ClassDef("car"), ClassDef("road", isthing=False)))
DRIVE = LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle")))


class FakeEncoder:
    """Names that share a word list entry are similar; everything else is orthogonal."""

    id = "fake"
    dim = 8
    GROUPS = (("person", "pedestrian"), ("car", "vehicle"))

    def encode(self, names: list[str]) -> torch.Tensor:
        rows = []
        for name in names:
            vec = torch.zeros(self.dim)
            group = next((i for i, g in enumerate(self.GROUPS) if name in g), None)
            vec[group if group is not None else 2 + hash(name) % 6] = 1.0
            if group is not None:
                vec[7] = 0.3 if name == self.GROUPS[group][0] else -0.3
            rows.append(vec / vec.norm())
        return torch.stack(rows)


@dataclass(frozen=True)
class FakePrediction:
    """The fields of `resi_core.predictor.Prediction` that the app reads (`app.services.Proposal`)."""

    segments: list[Segment]
    domain_probs: dict[str, float] = field(default_factory=dict)
    out_of_domain: tuple[str, ...] = ()


class FakePredictor:
    """Two boxes per request: the first class of each space top-left, the second bottom-right.
    It implements `app.services.Proposer`, as the real predictor does."""

    label_spaces = {"street": STREET, "drive": DRIVE}

    def clear_cache(self) -> None:
        pass

    def predict(self, image: np.ndarray, request: Request, *, with_instances: bool = True) -> FakePrediction:

        h, w = image.shape[:2]
        names = () if isinstance(request, AdHocRequest) else request.spaces
        unknown = [s for s in names if s not in self.label_spaces]
        if unknown:
            raise RequestError(f"Unknown label space {unknown}.")
        spaces = [self.label_spaces[s] for s in names]
        if isinstance(request, AdHocRequest | MixedRequest):
            spaces.append(LabelSpace("adhoc", tuple(ClassDef(n) for n in request.class_names)))
        segments = []
        for k, space in enumerate(spaces):
            for j, cls in enumerate(space.classes[:2]):
                mask = np.zeros((h, w), dtype=bool)
                top, left = (0, 0) if j == 0 else (h // 2, w // 2)
                mask[top + k : top + h // 2, left : left + w // 2] = True
                src = (Source(space.name, cls.name, j, space.name),)
                segments.append(Segment(f"{space.name}-{j}", mask, cls.name, (space.name,), 0.9 - 0.1 * j,
                                        cls.isthing, src))
        return FakePrediction(segments)


class FakeModel(ModelProvider):
    """The app's checkpoint is the fake one, already "loaded"; other checkpoints load for real."""

    def __init__(self, available: bool = True):
        super().__init__(Path("fake-checkpoint"), "fake", "cpu", Path("."))
        self._available = available
        self._encoder = FakeEncoder()
        key = self.checkpoint.resolve()
        self._predictors[key] = FakePredictor()
        self._infos[key] = ModelInfo("fake", self.checkpoint, "f" * 64, (STREET, DRIVE), "fake")

    def exists(self, checkpoint: Path | None = None) -> bool:
        return self._available if checkpoint in (None, self.checkpoint) else super().exists(checkpoint)


@pytest.fixture
def svc(tmp_path: Path) -> Services:
    services = open_services(AppConfig(data_dir=tmp_path / "data"))
    return replace(services, model=FakeModel())


def image_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: Path, **kwargs: Any) -> Path:
    path.write_bytes(image_bytes(**kwargs))
    return path


@pytest.fixture
def project(svc: Services, tmp_path: Path) -> UserState:
    """A project with two uploaded images and a street+drive class set; the first image is open."""
    state = create_project(svc, "demo")
    report = upload_images(svc, state, [write_image(tmp_path / "a.png"),
                                        write_image(tmp_path / "b.png", color=(10, 200, 10))])
    save_class_set(svc, state, ["street", "drive"], "", [])
    return replace(state, image_id=report.first_image_id)


# --- a real (tiny, untrained) RESI checkpoint -----------------------------------------------------

TINY_MODEL = {  # the model section of configs/world_tiny.json
    "backbone_stem": 16, "backbone_channels": (16, 16, 32, 32), "backbone_depths": (1, 1, 1, 1),
    "hidden_size": 32, "feature_size": 32, "mask_feature_size": 32, "encoder_layers": 1, "decoder_layers": 2,
    "num_heads": 2, "dim_feedforward": 64, "encoder_feedforward_dim": 64, "num_queries": 8,
    "text_encoder": "minilm", "text_dim": 384, "train_num_points": 256, "max_size": 64,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised tiny RESI model for the world's source label spaces, with MiniLM class
    embeddings, saved as a real checkpoint folder."""
    from resi_core.model import RESIConfig, build_model, save_checkpoint
    from resi_core.text import get_text_encoder
    from resi_core.world import source_spaces

    torch.manual_seed(0)
    model = build_model(RESIConfig(**TINY_MODEL), list(source_spaces().values()), get_text_encoder("minilm"))
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, {"note": "untrained, for tests"})


def coco_photo() -> Path:
    return coco128_photos(1)[0]
