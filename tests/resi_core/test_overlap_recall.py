"""Overlap recall (docs/METRICS.md) on hand-built 10x10 images whose pairs are counted on paper."""

from __future__ import annotations

import numpy as np
import pytest

from resi_core.metrics import evaluate, overlap_recall, piq
from resi_core.metrics.overlap import overlapping_pairs
from tests.resi_core.test_metrics import box, car_vehicle, ground_truth, pred

PERSON, FACE, HAIR, CAR = 1, 2, 3, 4
CATEGORIES = [
    (PERSON, "person", True, "street"),
    (FACE, "face", True, "portrait"),
    (HAIR, "hair", True, "portrait"),
    (CAR, "car", True, "street"),
]
PERSON_GT = box((2, 9), (3, 6))  # 32 px
FACE_GT = box((3, 4), (3, 6))  # 8 px, inside the person: shares all of the smaller mask
HAIR_GT = box((0, 2), (3, 6))  # 12 px, 4 of them (row 2) inside the person: 4 < 12/2 -> no pair
CAR_GT = box((7, 9), (6, 9))  # 12 px; shares column 6 rows 7-9 (3 px) with the person, same space


def scene():
    return ground_truth(CATEGORIES, [(PERSON, PERSON_GT), (FACE, FACE_GT), (HAIR, HAIR_GT), (CAR, CAR_GT)])


def test_pairs_need_half_the_smaller_mask_and_different_spaces():
    masks = np.stack([PERSON_GT, FACE_GT, HAIR_GT, CAR_GT])
    spaces = {PERSON: ("street",), FACE: ("portrait",), HAIR: ("portrait",), CAR: ("street",)}
    classes = np.array([PERSON, FACE, HAIR, CAR])
    # Only person/face: hair shares 4 of its 12 px (a third); car is street's, like the person.
    assert overlapping_pairs(masks, classes, np.zeros(4, bool), spaces) == [(0, 1)]
    # Exactly half of the smaller mask counts: a 6 px hair with 3 px in the person.
    half = box((1, 2), (3, 5))  # rows 1-2, cols 3-5: 6 px, row 2 (3 px) inside the person
    pair = overlapping_pairs(np.stack([PERSON_GT, half]), np.array([PERSON, HAIR]), np.zeros(2, bool), spaces)
    assert pair == [(0, 1)]
    # A class of two fused spaces shares one with the other class: never a pair.
    fused = {PERSON: ("street", "drive"), FACE: ("drive",)}
    assert overlapping_pairs(np.stack([PERSON_GT, FACE_GT]), np.array([PERSON, FACE]), np.zeros(2, bool), fused) == []
    # Crowd masks never count.
    assert overlapping_pairs(np.stack([PERSON_GT, FACE_GT]), np.array([PERSON, FACE]), np.array([True, False]),
                             spaces) == []


def test_both_masks_matched():
    gt = scene()
    # person exact (IoU 1), face 12 px over its 8 (IoU 2/3): both TP -> 1 of 1.
    result = overlap_recall(gt, [pred(PERSON, PERSON_GT, 0.9), pred(FACE, box((2, 4), (3, 6)), 0.8)])
    assert (result.found, result.pairs, result.recall) == (1, 1, 1.0)
    assert {k: (v.found, v.pairs) for k, v in result.per_pair.items()} == {"person / face": (1, 1)}


@pytest.mark.parametrize(
    "predictions",
    [
        [pred(PERSON, PERSON_GT, 0.9)],  # the face is missed
        [pred(PERSON, PERSON_GT, 0.9), pred(HAIR, FACE_GT, 0.8)],  # the face's pixels, but as hair
        # face IoU exactly 1/2 (8 of a 16 px box): not > 0.5
        [pred(PERSON, PERSON_GT, 0.9), pred(FACE, box((3, 6), (3, 6)), 0.8)],
        # the person's prediction only covers its lower half (16 / 32 = 0.5): not matched
        [pred(PERSON, box((6, 9), (3, 6)), 0.9), pred(FACE, FACE_GT, 0.8)],
    ],
)
def test_pair_not_found(predictions):
    result = overlap_recall(scene(), predictions)
    assert (result.found, result.pairs, result.recall) == (0, 1, 0.0)


def test_matching_is_piq_matching_one_prediction_per_truth():
    # Two persons, each with a face; both face predictions fit face a. PIQ matches each truth at most
    # once, so the second is an FP and face b stays unmatched: 1 of 2 pairs.
    person_a, face_a = box((2, 9), (0, 3)), box((2, 3), (1, 2))  # 32 px, 4 px
    person_b, face_b = box((2, 9), (6, 9)), box((2, 3), (7, 8))
    gt = ground_truth(CATEGORIES, [(PERSON, person_a), (FACE, face_a), (PERSON, person_b), (FACE, face_b)])
    preds = [pred(PERSON, person_a, 0.9), pred(PERSON, person_b, 0.9), pred(FACE, face_a, 0.8),
             pred(FACE, face_a, 0.7)]  # a duplicate of face a: an FP, it cannot claim face b
    result = overlap_recall(gt, preds)
    assert (result.found, result.pairs) == (1, 2)
    assert piq(gt, preds).per_class["face"].fp == 1


def test_no_pairs_is_none_and_evaluate_carries_it():
    gt, preds = car_vehicle()  # car/vehicle and truck/vehicle share all pixels, from street and drive
    result = evaluate(gt, preds)
    # car (TP) with vehicle #1 (TP): found; truck (FN) with vehicle #2 (TP): not found.
    assert (result.overlap.found, result.overlap.pairs) == (1, 2)
    assert result.to_json()["overlap"]["per_pair"]["car / vehicle"] == {"pairs": 1, "found": 1, "recall": 1.0}
    alone = ground_truth([(PERSON, "person", True, "street")], [(PERSON, PERSON_GT)])
    empty = overlap_recall(alone, [pred(PERSON, PERSON_GT, 0.9)])
    assert (empty.recall, empty.pairs, empty.found) == (None, 0, 0)


def test_stuff_pair_follows_the_merged_segment():
    # Drive's vegetation over street's grass-like "lawn" stuff: both stuff, one segment each.
    lawn, vegetation = box((6, 9), (0, 9)), box((5, 9), (0, 9))  # 40 px inside 50 px
    gt = ground_truth([(1, "lawn", False, "street"), (2, "vegetation", False, "drive")], [(1, lawn), (2, vegetation)])
    # Lawn predicted in two pieces that merge to the whole; vegetation at IoU 40/50 = 0.8.
    preds = [pred(1, box((6, 7), (0, 9)), 0.6), pred(1, box((8, 9), (0, 9)), 0.5), pred(2, lawn, 0.9)]
    assert overlap_recall(gt, preds).recall == 1.0
    assert overlap_recall(gt, preds[:1] + preds[2:]).recall == 0.0  # lawn half found: IoU 0.5
