"""The Label tab's picture: display size, opacity, outlines, the selection ring, and what a click hits."""

from __future__ import annotations

import numpy as np

from app.editing import BrushMode, apply_strokes, brush_size, editor_value, stroke_mask
from app.render import DISPLAY_MAX_SIDE, class_color, overview, segments_at
from app.segments import SegmentView, short_names


def _segment(mask: np.ndarray, seg_id: str = "s1", class_name: str = "car") -> SegmentView:
    return SegmentView(seg_id, class_name, "street", mask, 0.9, True)


def _box(shape: tuple[int, int], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    return mask


def test_big_photo_is_drawn_at_display_size_and_strokes_map_back() -> None:
    height, width = 3000, 4000
    image = np.zeros((height, width, 3), dtype=np.uint8)
    mask = _box((height, width), slice(0, 1500), slice(0, 2000))  # the top-left quarter
    picture = overview(image, [_segment(mask)], alpha=0.5)
    assert picture.shape == (960, DISPLAY_MAX_SIDE, 3)
    assert picture[100:380, 100:540].any(axis=2).all()  # inside the quarter: tinted
    assert not picture[490:, :].any() and not picture[:, 650:].any()  # elsewhere: the black photo

    start = editor_value(image, mask, "car")
    assert start["background"].shape == (960, 1280, 3)
    # A stroke over the right half of the displayed picture is the right half of the photo.
    layer = np.zeros((960, 1280, 4), dtype=np.uint8)
    layer[:, 640:, 3] = 255
    strokes = stroke_mask({**start, "layers": [layer]}, (height, width))
    assert strokes.shape == (height, width) and strokes[:, 2000:].all() and not strokes[:, :2000].any()
    grown = apply_strokes(mask, strokes, BrushMode.ADD)
    assert grown[:1500].all() and not grown[1500:, :2000].any()
    assert not apply_strokes(mask, strokes, BrushMode.ERASE)[:, 2000:].any()


def test_a_mid_size_image_is_drawn_as_is_and_opacity_blends_the_class_color() -> None:
    image = np.full((480, 640, 3), 100, dtype=np.uint8)
    assert np.array_equal(overview(image, []), image)
    assert editor_value(image, None)["background"].shape == (480, 640, 3)
    seg = _segment(_box((480, 640), slice(100, 300), slice(100, 400)))
    inside = (200, 250)  # far from the outline
    assert np.array_equal(overview(image, [seg], alpha=0.0)[inside], image[inside])
    assert np.array_equal(overview(image, [seg], alpha=1.0)[inside], np.array(class_color("car"), dtype=np.uint8))
    half = overview(image, [seg], alpha=0.5)[inside].astype(int)
    expected = (np.array(class_color("car")) + 100) / 2
    assert np.abs(half - expected).max() <= 1  # rounding of the blend


def test_a_small_image_is_drawn_larger_and_strokes_map_back() -> None:
    image = np.zeros((128, 96, 3), dtype=np.uint8)
    image[:64] = 200
    mask = _box((128, 96), slice(0, 64), slice(0, 48))
    picture = overview(image, [], alpha=0.5)
    assert picture.shape == (512, 384, 3)
    assert (picture[:256] == 200).all() and not picture[256:].any()  # the pixels, four times bigger
    layer = np.zeros((512, 384, 4), dtype=np.uint8)
    layer[256:, :, 3] = 255
    strokes = stroke_mask({**editor_value(image, mask, "car"), "layers": [layer]}, (128, 96))
    assert strokes[64:].all() and not strokes[:64].any()


def test_every_side_of_a_mask_is_outlined_in_its_color_over_the_segments_under_it() -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    big = _segment(_box((480, 640), slice(50, 450), slice(50, 600)), "big", "road")
    small = _segment(_box((480, 640), slice(100, 300), slice(100, 400)), "small", "car")
    picture = overview(image, [small, big], alpha=0.5)  # the smaller one is drawn on top
    car = np.array(class_color("car"), dtype=np.uint8)
    for edge in [(100, 250), (299, 250), (200, 100), (200, 399)]:  # top, bottom, left and right sides
        assert np.array_equal(picture[edge], car), edge
    assert np.array_equal(picture[50, 300], np.array(class_color("road"), dtype=np.uint8))
    assert not np.array_equal(picture[200, 250], car)  # inside: blended, not the full color


def test_the_selected_segment_is_ringed_in_white() -> None:
    image = np.zeros((480, 640, 3), dtype=np.uint8)
    seg = _segment(_box((480, 640), slice(100, 300), slice(100, 400)))
    plain, ringed = overview(image, [seg]), overview(image, [seg], selected_id="s1")
    assert not plain[98, 200].any()  # two pixels above the mask: background
    assert (ringed[98, 200] == 255).all() and (ringed[301, 200] == 255).all()  # just outside: the ring
    assert np.array_equal(ringed[200, 250], plain[200, 250])  # the inside is drawn as before
    assert not ringed[300 + 3 + 2, 200].any()  # the black rim just outside the 3-pixel ring, then the photo
    assert not image.any()  # the photo itself is never drawn on


def test_a_click_hits_the_topmost_segment_first() -> None:
    shape = (40, 40)
    person = _segment(_box(shape, slice(0, 40), slice(0, 20)), "p", "person")
    face = _segment(_box(shape, slice(2, 8), slice(5, 12)), "f", "face")
    # The smaller one is drawn on top whatever the stored order, so the face is reached first.
    for order in ([person, face], [face, person]):
        assert segments_at(order, (6, 4), shape) == ["f", "p"]
        assert segments_at(order, (6, 30), shape) == ["p"]
        assert segments_at(order, (30, 30), shape) == []
    # Points are in the picture's grid: on a picture drawn at half size, (3, 2) is the image's (6, 4).
    assert segments_at([person, face], (3, 2), (20, 20)) == ["f", "p"]


def test_short_names_number_each_class_in_stored_order() -> None:
    mask = np.ones((4, 4), dtype=bool)
    segs = [_segment(mask, "a", "person"), _segment(mask, "b", "car"), _segment(mask, "c", "person")]
    assert short_names(segs) == {"a": "person 1", "b": "car 1", "c": "person 2"}


def test_the_brush_is_sized_to_the_image() -> None:
    # In the picture's pixels; a 128-pixel image is drawn at 512, so its brush covers 2 of its pixels.
    assert brush_size((128, 128, 3)) == 8
    assert brush_size((512, 512, 3)) == 8
    assert brush_size((3000, 4000, 3)) == 15  # drawn at 960x1280
