"""OMI, instance inference, baseline rules and ESF on hand-built tensors and masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resi_core.labels import ClassDef, LabelSpace, mix
from resi_core.postprocess import (
    esf_fuse,
    hold_out_of_domain,
    instance_list,
    interp_matrix,
    mask_iou,
    omi_panoptic,
    overlapping_instances,
    semantic_inference,
    semantic_union,
    standard_panoptic_union,
    upsample_masks,
    upscale_masks,
    working_size,
)
from resi_core.segment import Segment, Source

H = W = 8
CLASSES = ["person", "car", "sky"]
ISTHING = [True, True, False]


def box_logits(*boxes: tuple[int, int, int, int]) -> torch.Tensor:
    """[Q, 8, 8] logits: +10 inside the box (r0, r1, c0, c1) of each query, −10 outside."""
    logits = torch.full((len(boxes), H, W), -10.0)
    for q, (r0, r1, c0, c1) in enumerate(boxes):
        logits[q, r0:r1, c0:c1] = 10.0
    return logits


def probs(*rows: tuple[int, float]) -> torch.Tensor:
    """[Q, K + 1]: query q puts probability p on class c and the rest on no-object."""
    out = torch.zeros(len(rows), len(CLASSES) + 1)
    for q, (c, p) in enumerate(rows):
        out[q, c] += p
        out[q, -1] += 1 - p
    return out


def test_interp_matrix_matches_bilinear_interpolate():
    x = torch.randn(2, 5, 7)
    for out_hw in [(5, 7), (13, 30), (3, 2)]:
        expected = F.interpolate(x[None], size=out_hw, mode="bilinear", align_corners=False)[0]
        got = torch.einsum("Hh,nhw,Ww->nHW", interp_matrix(out_hw[0], 5), x, interp_matrix(out_hw[1], 7))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_omi_drops_low_score_no_object_and_occluded_and_merges_stuff():
    logits = box_logits(
        (0, 4, 0, 4),  # q0 person 0.9
        (4, 8, 4, 8),  # q1 car 0.3: below threshold
        (0, 8, 0, 8),  # q2 best class is no-object
        (0, 4, 2, 6),  # q3 car 0.6: loses half its mask to q0 (0.5 < 0.8)
        (6, 8, 0, 8),  # q4 sky 0.8
        (4, 6, 0, 4),  # q5 sky 0.7: merged with q4
        (4, 6, 4, 8),  # q6 car 0.95
    )
    class_probs = probs((0, 0.9), (1, 0.3), (0, 0.2), (1, 0.6), (2, 0.8), (2, 0.7), (1, 0.95))
    segments = omi_panoptic(logits, class_probs, ISTHING, (H, W))
    by_label = {s.label: s for s in segments}
    assert sorted(s.queries for s in segments) == [(0,), (4, 5), (6,)]
    assert by_label[0].mask.sum() == 16 and by_label[0].score == pytest.approx(0.9)
    assert by_label[2].mask.sum() == 16 + 8 and by_label[2].score == pytest.approx(0.8)
    assert by_label[1].queries == (6,)
    total = np.sum([s.mask for s in segments], axis=0)
    assert total.max() == 1  # no overlaps within a pass
    assert all(s.mask.dtype == np.bool_ and s.mask.shape == (H, W) for s in segments)


def test_omi_keeps_occluded_query_above_overlap_threshold_and_threshold_is_configurable():
    logits = box_logits((0, 4, 0, 4), (0, 4, 3, 8))  # q1 loses 4 of 20 pixels: keeps 0.8
    class_probs = probs((0, 0.9), (1, 0.6))
    kept = omi_panoptic(logits, class_probs, ISTHING, (H, W))
    assert [s.queries for s in kept] == [(0,), (1,)]
    assert kept[1].mask.sum() == 16
    assert [s.queries for s in omi_panoptic(logits, class_probs, ISTHING, (H, W), overlap_threshold=0.9)] == [
        (0,)
    ]
    assert omi_panoptic(logits, class_probs, ISTHING, (H, W), score_threshold=0.95) == []


def test_things_of_one_class_stay_separate():
    logits = box_logits((0, 4, 0, 4), (4, 8, 4, 8))
    segments = omi_panoptic(logits, probs((0, 0.9), (0, 0.8)), ISTHING, (H, W))
    assert len(segments) == 2


def test_standard_panoptic_union_is_non_overlapping():
    logits = box_logits((0, 8, 0, 8), (0, 4, 0, 4))
    segments = standard_panoptic_union(
        logits, probs((0, 0.9), (1, 0.95)), ISTHING, (H, W), overlap_threshold=0.0
    )
    assert np.sum([s.mask for s in segments], axis=0).max() == 1


def test_overlapping_instances_keep_their_own_masks():
    logits = box_logits((0, 8, 0, 8), (0, 4, 0, 4), (4, 8, 4, 8))
    segments = overlapping_instances(logits, probs((0, 0.7), (1, 0.9), (1, 0.4)), (H, W), score_threshold=0.5)
    assert [s.queries for s in segments] == [(1,), (0,)]  # sorted by score; q2 below threshold
    assert segments[1].mask.all() and segments[0].mask.sum() == 16


def test_instance_list_scores_topk_and_thing_filter():
    logits = box_logits((0, 4, 0, 4), (4, 8, 0, 8))
    logits[0, 0, 0] = 0.0  # σ = 0.5 at one pixel of q0's mask
    class_probs = torch.tensor([[0.6, 0.3, 0.0, 0.1], [0.0, 0.1, 0.8, 0.1]])
    segments = instance_list(logits, class_probs, (H, W), topk=3, isthing=ISTHING)
    assert [(s.queries, s.label) for s in segments] == [((0,), 0), ((0,), 1), ((1,), 1)]  # sky is stuff
    mean_sigma = (15 * torch.sigmoid(torch.tensor(10.0)) + 0.5) / 16
    assert segments[0].score == pytest.approx(0.6 * float(mean_sigma), rel=1e-5)
    assert len(instance_list(logits, class_probs, (H, W), topk=1)) == 1
    with_stuff = instance_list(logits, class_probs, (H, W), topk=1)
    assert with_stuff[0].label == 2


def test_semantic_inference_sums_queries_and_leaves_weak_pixels_unlabeled():
    logits = box_logits(
        (0, 4, 0, 4),  # q0 person 0.9
        (0, 8, 0, 8),  # q1 sky 0.45: alone below the pixel threshold
        (4, 8, 4, 8),  # q2 car 0.3
        (0, 8, 0, 8),  # q3 car 0.25 (best is no-object): with q2, car scores 0.55 in q2's box
    )
    class_probs = probs((0, 0.9), (2, 0.45), (1, 0.3), (1, 0.25))
    segments = semantic_inference(logits, class_probs, (H, W))
    by_label = {s.label: s for s in segments}
    assert set(by_label) == {0, 1}  # sky (0.45 + 0.25 car elsewhere) never reaches 0.5
    assert np.array_equal(by_label[0].mask, box_logits((0, 4, 0, 4))[0].numpy() > 0)
    assert np.array_equal(by_label[1].mask, box_logits((4, 8, 4, 8))[0].numpy() > 0)
    assert by_label[0].score == pytest.approx(0.9, abs=1e-3) and by_label[1].score == pytest.approx(0.55, abs=1e-3)
    assert by_label[1].queries == (2, 3) and [s.label for s in segments] == [0, 1]  # sorted by score
    # A lower pixel threshold labels the rest as sky, which beats car's 0.25 there.
    low = {s.label: s for s in semantic_inference(logits, class_probs, (H, W), pixel_threshold=0.4)}
    assert low[2].mask.sum() == 64 - 16 - 16


def test_semantic_inference_min_score_counts_only_confident_queries():
    logits = box_logits((0, 4, 0, 4), (4, 8, 4, 8), (4, 8, 4, 8))
    class_probs = probs((0, 0.99), (1, 0.6), (1, 0.3))
    (only,) = semantic_inference(logits, class_probs, (H, W), min_score=0.98)
    assert only.label == 0 and only.mask.sum() == 16 and only.queries == (0,)
    assert semantic_inference(logits, class_probs, (H, W), min_score=0.995) == []
    assert {s.label for s in semantic_inference(logits, class_probs, (H, W))} == {0, 1}


def test_masks_map_back_through_resize_and_padding():
    # The model grid is 4x4; only its left 2 columns cover the image (the rest is padding).
    logits = torch.full((1, 4, 4), -10.0)
    logits[0, :, :2] = 10.0
    full = upsample_masks(logits, (12, 10), valid_extent=(4.0, 2.0))
    assert full.shape == (1, 12, 10) and full.all()
    assert not upsample_masks(logits, (12, 10))[0, :, 6:].any()  # ignoring padding would be wrong


# ---- ESF ----

STREET = LabelSpace("street", (ClassDef("person"), ClassDef("car"), ClassDef("road", isthing=False)))
PORTRAIT = LabelSpace("portrait", (ClassDef("face"), ClassDef("hair")))
DRIVE = LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"), ClassDef("road", isthing=False)))


def rect(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask[r0:r1, c0:c1] = True
    return mask


def seg(space: str, name: str, score: float, mask: np.ndarray, query: int = 0) -> Segment:
    return Segment(
        id=f"{space}-{name}-{query}",
        mask=mask,
        class_name=name,
        label_spaces=(space,),
        score=score,
        isthing=True,
        sources=(Source(space, name, query, space),),
    )


def test_esf_fuses_same_class_duplicates_from_two_passes():
    mixed = mix([STREET, DRIVE])
    street = [seg("street", "road", 0.7, rect(5, 10, 0, 10))]
    drive = [seg("drive", "road", 0.9, rect(6, 10, 0, 10), query=3)]
    fused = esf_fuse([street, drive], mixed)
    assert len(fused) == 1
    (out,) = fused
    assert out.score == 0.9 and out.id == "drive-road-3"
    assert np.array_equal(out.mask, rect(6, 10, 0, 10))
    assert set(out.label_spaces) == {"street", "drive"}
    assert {(s.label_space, s.query_index) for s in out.sources} == {("street", 0), ("drive", 3)}


def test_esf_keeps_different_classes_even_when_fully_overlapping():
    mixed = mix([STREET, PORTRAIT])
    person, face = (
        seg("street", "person", 0.9, rect(0, 5, 0, 5)),
        seg("portrait", "face", 0.8, rect(0, 5, 0, 5)),
    )
    assert {s.class_name for s in esf_fuse([[person], [face]], mixed)} == {"person", "face"}


def test_esf_fuses_synonyms_only_when_declared():
    person = seg("street", "person", 0.9, rect(0, 6, 0, 4))
    pedestrian = seg("drive", "pedestrian", 0.8, rect(0, 6, 0, 4))
    assert len(esf_fuse([[person], [pedestrian]], mix([STREET, DRIVE]))) == 2
    fused = esf_fuse([[person], [pedestrian]], mix([STREET, DRIVE], [("person", "pedestrian")]))
    assert len(fused) == 1 and fused[0].class_name == "person"
    assert set(fused[0].label_spaces) == {"street", "drive"}


def test_esf_never_fuses_same_names_of_a_distinct_space():
    """M5's rule: avenue's "car" is another class than street's, however well their masks agree."""
    avenue = LabelSpace("avenue", STREET.classes)
    street_car, avenue_car = seg("street", "car", 0.9, rect(0, 6, 0, 6)), seg("avenue", "car", 0.8, rect(0, 6, 0, 6))
    assert len(esf_fuse([[street_car], [avenue_car]], mix([STREET, avenue]))) == 1  # the default: one class
    kept = esf_fuse([[street_car], [avenue_car]], mix([STREET, avenue], distinct=["avenue"]))
    assert [s.label_spaces for s in kept] == [("street",), ("avenue",)]
    # and semantic maps keep them apart too
    union = semantic_union([[street_car], [avenue_car]], mix([STREET, avenue], distinct=["avenue"]))
    assert len(union) == 2


def test_esf_keeps_same_class_apart_below_iou_threshold():
    a, b = rect(0, 10, 0, 4), rect(0, 10, 2, 6)  # IoU = 20 / 60
    assert mask_iou(a, b) == pytest.approx(1 / 3)
    road_s, road_d = seg("street", "road", 0.9, a), seg("drive", "road", 0.8, b)
    assert len(esf_fuse([[road_s], [road_d]], mix([STREET, DRIVE]))) == 2
    assert len(esf_fuse([[road_s], [road_d]], mix([STREET, DRIVE]), iou_threshold=0.3)) == 1


def test_esf_never_fuses_within_one_pass():
    mixed = mix([STREET, DRIVE])
    one_pass = [seg("street", "car", 0.9, rect(0, 5, 0, 5)), seg("street", "car", 0.8, rect(0, 5, 0, 5), 1)]
    assert len(esf_fuse([one_pass], mixed)) == 2


def test_esf_adhoc_passes_fuse_by_query_set():
    from resi_core.labels import adhoc_space

    mixed = mix([adhoc_space(["dog"])])
    a = Segment("a", rect(0, 5, 0, 5), "dog", ("adhoc",), 0.6, True, (Source("adhoc", "dog", 2, "street"),))
    b = Segment("b", rect(0, 5, 0, 5), "dog", ("adhoc",), 0.7, True, (Source("adhoc", "dog", 4, "drive"),))
    (fused,) = esf_fuse([[a], [b]], mixed)
    assert fused.id == "b" and fused.query_sets == ("drive", "street")


def test_hold_out_of_domain_makes_weak_out_of_domain_queries_no_object():
    """The baselines' domain-aware variant: classes 0 (vegetation, drive only) and 2 are out of the image's
    likeliest domain, class 1 (sky) in it."""
    in_domain = [False, True, False]
    probs = torch.tensor([[0.90, 0.0, 0.0, 0.10],  # out of domain, weak: -> ∅
                          [0.99, 0.0, 0.0, 0.01],  # out of domain but near-certain: kept
                          [0.0, 0.60, 0.0, 0.40],  # in domain: kept
                          [0.0, 0.30, 0.20, 0.50],  # best is ∅: kept as it is
                          [0.0, 0.0, 0.0, 1.0]])
    gated = hold_out_of_domain(probs, in_domain, 0.98)
    assert torch.equal(gated[1:], probs[1:])
    assert gated[0].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert torch.equal(hold_out_of_domain(probs, [True] * 3, 0.98), probs)


def test_semantic_union_unions_a_class_across_passes_and_keeps_other_classes_overlapping():
    mixed = mix([STREET, DRIVE, PORTRAIT])
    street = [seg("street", "road", 0.7, rect(5, 10, 0, 10)), seg("street", "person", 0.8, rect(0, 5, 0, 5))]
    drive = [seg("drive", "road", 0.9, rect(0, 2, 0, 10), query=3)]  # IoU with street's road is 0: no matter
    portrait = [seg("portrait", "face", 0.6, rect(0, 2, 0, 2))]  # inside the person
    out = {s.class_name: s for s in semantic_union([street, drive, portrait], mixed)}
    assert set(out) == {"road", "person", "face"}
    assert np.array_equal(out["road"].mask, rect(5, 10, 0, 10) | rect(0, 2, 0, 10))
    assert out["road"].score == 0.9 and out["road"].id == "drive-road-3"
    assert set(out["road"].label_spaces) == {"street", "drive"}
    assert (out["face"].mask & out["person"].mask).sum() == 4


def test_segment_helpers():
    s = seg("street", "car", 0.5, rect(2, 5, 3, 9))
    assert s.area == 18 and s.bbox_xywh == (3, 2, 6, 3)
    rle = s.to_rle()
    assert rle["size"] == [10, 10] and isinstance(rle["counts"], str)
    from pycocotools import mask as mask_utils

    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), s.mask)
    with pytest.raises(ValueError):
        s.mask[0, 0] = True
    with pytest.raises(ValueError, match="bool HxW"):
        seg("street", "car", 0.5, np.zeros((3, 3), dtype=np.uint8))


def test_working_size_scales_the_long_side_down_only():
    assert working_size((4000, 6000), 1536) == (1024, 1536)
    assert working_size((6000, 4000), 1536) == (1536, 1024)
    assert working_size((480, 640), 1536) == (480, 640)
    assert working_size((4000, 6000), None) == (4000, 6000)
    assert working_size((1, 9000), 1536) == (1, 1536)


@pytest.mark.parametrize("small_hw, out_hw", [((37, 53), (400, 333)), ((5, 7), (5, 7)), ((64, 96), (1000, 1501))])
def test_upscale_masks_is_nearest_neighbour_sampling(small_hw, out_hw):
    """Oracle: torch's nearest-exact interpolation (source pixel = floor((i + 0.5) * in / out))."""
    rng = np.random.default_rng(0)
    masks = [rng.random(small_hw) > 0.5, np.zeros(small_hw, dtype=bool), np.ones(small_hw, dtype=bool)]
    for mask, up in zip(masks, upscale_masks(masks, out_hw), strict=True):
        expected = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=out_hw, mode="nearest-exact")
        assert up.shape == out_hw and up.dtype == np.bool_
        assert np.array_equal(up, expected[0, 0].numpy().astype(bool))
        assert up.flags.f_contiguous  # the order RLE runs in: encoding it copies nothing
    assert upscale_masks([], (10, 10)) == []
