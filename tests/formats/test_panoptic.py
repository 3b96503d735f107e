"""formats.panoptic: id packing, and painting overlapping masks of one label space by a stated policy."""

from __future__ import annotations

import numpy as np
import pytest

from formats.panoptic import Mask, pack_ids, paint, unpack_rgb
from formats.rle import encode_mask

H, W = 10, 12


def box(y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_ids_pack_as_r_plus_256_g_plus_256_squared_b():
    ids = np.array([[0, 1, 255], [256, 65536 + 2, 256**3 - 1]], dtype=np.uint32)
    rgb = pack_ids(ids)
    assert rgb[1, 1].tolist() == [2, 0, 1] and rgb[1, 0].tolist() == [0, 1, 0]
    assert np.array_equal(unpack_rgb(rgb), ids)


@pytest.mark.parametrize("policy, keeper", [("smaller", "person"), ("later", "car")])
def test_overlap_goes_by_policy_and_every_pixel_given_up_is_reported(policy: str, keeper: str):
    person, car = box(0, 0, 6, 4), box(2, 0, 10, 12)  # 24 and 96 pixels, sharing rows 2..5 of columns 0..3
    masks = [Mask(encode_mask(person), 1, True, key="person"), Mask(encode_mask(car), 2, True, key="car")]
    ids, infos, given_up = paint(masks, H, W, policy)
    shared = person & car
    owner = {i["category_id"]: i["id"] for i in infos}
    assert (ids[shared] == owner[1 if keeper == "person" else 2]).all()
    loser = "car" if keeper == "person" else "person"
    assert [(g.key, g.pixels, g.whole) for g in given_up] == [(loser, int(shared.sum()), False)]
    for info in infos:
        assert info["area"] == (ids == info["id"]).sum()
        ys, xs = np.nonzero(ids == info["id"])
        assert info["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_stuff_of_one_class_is_one_segment_and_a_covered_mask_is_reported_whole():
    road_a, road_b, dot = box(0, 0, 2, 12), box(8, 0, 10, 12), box(0, 0, 1, 1)
    masks = [Mask(encode_mask(road_a), 5, False, key="a"), Mask(encode_mask(road_b), 5, False, key="b"),
             Mask(encode_mask(dot), 1, True, key="dot"), Mask(encode_mask(dot), 2, True, key="dot2")]
    ids, infos, given_up = paint(masks, H, W)
    roads = [i for i in infos if i["category_id"] == 5]
    assert len(roads) == 1 and roads[0]["area"] == 4 * 12 - 1 and roads[0]["bbox"] == [0, 0, 12, 10]
    # dot and dot2 are the same size: the later one keeps the pixel, the earlier is gone entirely
    assert [(g.key, g.pixels, g.whole) for g in given_up] == [("a", 1, False), ("dot", 1, True)]
    assert {i["category_id"] for i in infos} == {5, 2}


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="overlap policy"):
        paint([], H, W, "biggest")
