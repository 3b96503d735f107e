"""The Label tab draws big photos at display size; masks and strokes stay in the image grid."""

from __future__ import annotations

import numpy as np

from app.editing import BrushMode, apply_strokes, editor_value, stroke_mask
from app.render import DISPLAY_MAX_SIDE, annotated_value
from app.segments import SegmentView


def _segment(mask: np.ndarray) -> SegmentView:
    return SegmentView("s1", "car", "street", mask, 0.9, True)


def test_big_photo_is_drawn_at_display_size_and_strokes_map_back() -> None:
    height, width = 3000, 4000
    image = np.zeros((height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), dtype=bool)
    mask[:1500, :2000] = True  # the top-left quarter
    picture, layers = annotated_value(image, [_segment(mask)])
    assert picture.shape == (960, DISPLAY_MAX_SIDE, 3)
    [(shown, label)] = layers
    assert shown.shape == (960, 1280) and label.startswith("car")
    assert shown[:480, :640].all() and not shown[480:, :].any() and not shown[:, 640:].any()

    start = editor_value(image, mask, "car")
    assert start["background"].shape == (960, 1280, 3)
    # A stroke over the right half of the displayed picture is the right half of the photo.
    layer = np.zeros((960, 1280, 4), dtype=np.uint8)
    layer[:, 640:, 3] = 255
    strokes = stroke_mask({**start, "layers": [layer]}, (height, width))
    assert strokes.shape == (height, width) and strokes[:, 2000:].all() and not strokes[:, :2000].any()
    grown = apply_strokes(mask, strokes, BrushMode.ADD)
    assert grown[:1500].all() and not grown[1500:, :2000].any()


def test_small_image_is_drawn_as_is() -> None:
    image = np.full((48, 64, 3), 7, dtype=np.uint8)
    mask = np.zeros((48, 64), dtype=bool)
    mask[5:9, 3:30] = True
    picture, [(shown, _)] = annotated_value(image, [_segment(mask)])
    assert np.array_equal(picture, image) and np.array_equal(shown > 0, mask)
    assert editor_value(image, None)["background"].shape == (48, 64, 3)
