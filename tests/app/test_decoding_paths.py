"""Images decode the same way everywhere (formats.images): the pixels a labeler sees after upload,
the pixels the model is given for a proposal, the pixels fine-tuning trains on and the pixels of
the exported file are one array, for files whose decoding is easy to get wrong.

Each file's expected pixels are worked out here by hand (alpha composited on white, 16-bit scaled
by 255/65535, CMYK with K = 0 as 255 - C, EXIF orientation 6 as a quarter turn clockwise), not taken
from the decoder.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.class_sets.handlers import save_class_set
from app.labeling.accept import accept
from app.labeling.images import load_image
from app.labeling.propose import propose
from app.projects.handlers import create_project
from app.projects.upload import upload_images
from app.services import Services
from formats.images import decode_image, to_rgb_uint8
from resi_core.data import CocoDataset
from storage import repo
from storage.export import export_coco
from train.finetune import AcceptedDataset

H, W = 6, 8
RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
ALPHA = np.tile(np.array([0, 255, 128, 64], dtype=np.uint8), (H, W // 4))  # [H, W]: clear, opaque, halves


def _save(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _on_white(color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.round(color.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def rgba() -> tuple[bytes, np.ndarray]:
    color = RGB.copy()
    color[ALPHA == 0] = (200, 0, 0)  # what hides under clear pixels must not show
    return _save(Image.fromarray(np.dstack([color, ALPHA]), "RGBA")), _on_white(color, ALPHA)


def la() -> tuple[bytes, np.ndarray]:
    gray = RGB[..., 0]
    expected = _on_white(np.repeat(gray[..., None], 3, axis=2), ALPHA)
    return _save(Image.fromarray(np.dstack([gray, ALPHA]), "LA")), expected


def palette_with_transparency() -> tuple[bytes, np.ndarray]:
    palette = [(200, 0, 0), (10, 20, 30), (0, 250, 5)]
    index = RNG.integers(0, 3, (H, W), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for color in palette for v in color])
    expected = np.array(palette, dtype=np.uint8)[index]
    expected[index == 0] = 255  # index 0 is the transparent one: white, not red
    return _save(image, transparency=0), expected


def sixteen_bit() -> tuple[bytes, np.ndarray]:
    deep = (RGB[..., 1].astype(np.uint16) * 257 + 100).clip(0, 65535).astype(np.uint16)
    gray = np.round(deep.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    return _save(Image.fromarray(deep)), np.repeat(gray[..., None], 3, axis=2)


def cmyk() -> tuple[bytes, np.ndarray]:
    ink = np.dstack([RGB, np.zeros((H, W), dtype=np.uint8)])  # K = 0: R = 255 - C, G = 255 - M, B = 255 - Y
    return _save(Image.fromarray(ink, "CMYK"), "TIFF"), 255 - RGB


def exif_rotated() -> tuple[bytes, np.ndarray]:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter clockwise
    return _save(Image.fromarray(RGB), exif=exif.tobytes()), np.rot90(RGB, k=-1)


FILES = {"rgba.png": rgba, "la.png": la, "palette.png": palette_with_transparency, "deep.png": sixteen_bit,
         "cmyk.tif": cmyk, "rotated.png": exif_rotated}


class RecordingPredictor:
    """Wraps the fake predictor and keeps the pixels the model would be given (the predictor's own
    first step, `to_rgb_uint8`, applied to what the app passes)."""

    def __init__(self, inner):
        self.inner, self.label_spaces, self.seen = inner, inner.label_spaces, []

    def predict(self, image, request, **kwargs):
        self.seen.append(to_rgb_uint8(image))
        return self.inner.predict(image, request, **kwargs)


@pytest.mark.parametrize("name", sorted(FILES))
def test_upload_propose_finetune_and_export_see_the_same_pixels(svc: Services, tmp_path: Path, name: str) -> None:
    data, expected = FILES[name]()
    path = tmp_path / name
    path.write_bytes(data)
    assert np.array_equal(decode_image(data), expected)

    # upload (storage), and what the labeler is shown
    state = create_project(svc, "p")
    report = upload_images(svc, state, [path])
    assert report.added == [name], report.rejected
    state = replace(state, image_id=report.first_image_id)
    save_class_set(svc, state, ["street"], "", [])
    with svc.sessions() as s:
        image = repo.get_image(s, state.image_id)
        assert (image.height, image.width) == expected.shape[:2]
    shown = load_image(svc, state)[1].image
    assert np.array_equal(shown, expected)

    # propose: what the model is given
    recorder = RecordingPredictor(svc.model.predictor())
    svc.model._predictors[svc.model.checkpoint.resolve()] = recorder
    proposed = propose(svc, state, "ann")
    assert proposed.ok and len(recorder.seen) == 1 and np.array_equal(recorder.seen[0], expected)

    # fine-tune on the accepted annotation, and export it
    assert accept(svc, proposed.state, "ann").ok
    with svc.sessions() as s:
        accepted = repo.accepted_annotations(s, state.project_id)
        export_coco(s, state.project_id, tmp_path / "out", svc.files)
    dataset = AcceptedDataset("new", accepted, "street", svc.files)
    assert np.array_equal(dataset[0].image, expected)
    exported = CocoDataset("exported", tmp_path / "out" / "images", tmp_path / "out" / "instances.json")
    assert np.array_equal(exported.image(0), expected)  # the exported file, read back as training data
