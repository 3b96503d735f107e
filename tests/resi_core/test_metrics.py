"""Metrics on hand-built cases whose numbers are worked out on paper in the comments."""

from __future__ import annotations

import numpy as np
import pytest

from formats.coco import Prediction, load_ground_truth
from formats.rle import encode_mask
from resi_core.metrics import evaluate, mask_ap, miou, paste_by_score, piq, piq_of_masks, pq

H = W = 10


def box(rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Bool [H, W] mask of rows r0..r1 and columns c0..c1, both inclusive."""
    m = np.zeros((H, W), dtype=bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def ground_truth(categories: list[tuple], anns: list[tuple[int, np.ndarray]], void=None):
    """One 10x10 image; categories as (id, name, isthing, label space(s)), anns as (category id, mask)."""
    return load_ground_truth(
        {
            "images": [
                {
                    "id": 1,
                    "height": H,
                    "width": W,
                    "void": {s: encode_mask(m) for s, m in (void or {}).items()},
                }
            ],
            "categories": [
                {
                    "id": i,
                    "name": n,
                    "isthing": int(t),
                    "label_spaces": [s] if isinstance(s, str) else list(s),
                }
                for i, n, t, s in categories
            ],
            "annotations": [
                {"id": k + 1, "image_id": 1, "category_id": c, "segmentation": encode_mask(m), "iscrowd": 0}
                for k, (c, m) in enumerate(anns)
            ],
        }
    )


def pred(category: int, mask: np.ndarray, score: float, space: str | None = None) -> Prediction:
    return Prediction(1, category, encode_mask(mask), score, space)


# ----------------------------------------------------------------------------- person + face

PERSON, FACE = 1, 2
PERSON_GT = box((2, 9), (3, 6))  # 8x4 = 32 px, street
FACE_GT = box((2, 3), (3, 6))  # 2x4 = 8 px, portrait; overlaps the person
PERSON_PRED = (PERSON_GT, 0.9)  # exact: IoU 1
FACE_PRED = (box((2, 4), (3, 6)), 0.8)  # 12 px covering the 8: IoU 8/12 = 2/3 -> TP
FACE_DUP = (box((2, 3), (3, 5)), 0.7)  # 6 px inside the face: IoU 6/8 = .75, but the face is taken -> FP


def person_face():
    gt = ground_truth(
        [(PERSON, "person", True, "street"), (FACE, "face", True, "portrait")],
        [(PERSON, PERSON_GT), (FACE, FACE_GT)],
    )
    preds = [pred(PERSON, *PERSON_PRED), pred(FACE, *FACE_PRED), pred(FACE, *FACE_DUP)]
    return gt, preds


def test_piq_person_face_overlap():
    gt, preds = person_face()
    result = piq(gt, preds)
    # person: 1 TP at IoU 1 -> 1. face: greedy by score, so the .8 one (IoU 2/3) matches and the
    # better-fitting .7 one is an FP: (2/3) / (1 + 1/2) = 4/9. PIQ = (1 + 4/9) / 2 = 13/18.
    assert result.per_class["person"].piq == pytest.approx(1.0)
    face = result.per_class["face"]
    assert (face.tp, face.fp, face.fn) == (1, 1, 0)
    assert face.piq == pytest.approx(4 / 9)
    assert result.piq == pytest.approx(13 / 18)
    assert result.piq_stuff is None


def test_miou_and_pq_person_face():
    gt, preds = person_face()
    # mIoU: person 32/32 = 1; face: union of both face predictions is the 12 px box, 8/12.
    assert miou(gt, preds).miou == pytest.approx((1 + 2 / 3) / 2)
    # PQ: street has only the person (1). In portrait the face predictions are pasted by score:
    # the .7 duplicate lies inside the .8 one and vanishes, leaving 1 TP at 2/3, no FP.
    result = pq(gt, preds)
    assert result.per_space["street"].piq == pytest.approx(1.0)
    assert result.per_space["portrait"].piq == pytest.approx(2 / 3)
    assert result.pq_mean == pytest.approx(5 / 6)


def test_piq_of_masks_matches_dataset_piq():
    # The app's single-image entry: same person + face case with class names as keys.
    proposal = [(PERSON_PRED[0], "person", True, 0.9), (FACE_PRED[0], "face", True, 0.8)]
    proposal.append((FACE_DUP[0], "face", True, 0.7))
    accepted = [(PERSON_GT, "person", True, 1.0), (FACE_GT, "face", True, 1.0)]
    result = piq_of_masks(proposal, accepted)
    assert result.piq == pytest.approx(13 / 18)
    assert piq_of_masks(accepted, accepted).piq == pytest.approx(1.0)
    assert piq_of_masks([], accepted).piq == pytest.approx(0.0)  # two FN classes
    assert piq_of_masks([], []).piq is None


def test_piq_of_masks_void_and_shape_check():
    # A proposal entirely inside void is ignored (not an FP); without void it is one.
    void = box((0, 1), (0, 9))
    proposal = [(box((0, 1), (0, 4)), "car", True, 0.5)]
    assert piq_of_masks(proposal, [], void).piq is None
    assert piq_of_masks(proposal, []).per_class["car"].fp == 1
    with pytest.raises(ValueError, match="same shape"):
        piq_of_masks([(np.zeros((4, 4), bool), "car", True, 1.0)], [(PERSON_GT, "person", True, 1.0)])


# ----------------------------------------------------------------------------- car + vehicle

CAR, TRUCK, VEHICLE, SKY = 1, 2, 3, 4


def car_vehicle():
    car = box((4, 7), (0, 4))  # 20 px
    truck = box((4, 5), (6, 9))  # 8 px
    gt = ground_truth(
        [
            (CAR, "car", True, "street"),
            (TRUCK, "truck", True, "street"),
            (VEHICLE, "vehicle", True, "drive"),
            (SKY, "sky", False, "street"),
        ],
        # drive labels car and truck as two vehicles on the same pixels; sky is street-only.
        [(CAR, car), (TRUCK, truck), (VEHICLE, car), (VEHICLE, truck), (SKY, box((0, 1), (0, 9)))],
        void={"drive": box((0, 1), (0, 9))},  # drive leaves the sky unlabeled
    )
    preds = [
        pred(CAR, box((4, 7), (0, 3)), 0.9),  # 16 px in the car: IoU .8 -> TP
        pred(VEHICLE, car, 0.9),  # IoU 1 -> TP
        pred(VEHICLE, box((3, 5), (6, 9)), 0.8),  # 12 px over the 8 px truck: IoU 2/3 -> TP
        pred(VEHICLE, box((4, 7), (0, 9)), 0.7),  # 40 px: both vehicles taken -> FP
        pred(VEHICLE, box((0, 2), (0, 9)), 0.6),  # 30 px, 20 in drive's void (> half) -> ignored
        pred(SKY, box((0, 0), (0, 9)), 0.5),  # sky in two pieces, merged: rows 0-2 = 30 px,
        pred(SKY, box((1, 2), (0, 9)), 0.4),  # IoU 20/30 = 2/3 -> TP
    ]
    return gt, preds


def test_piq_car_vehicle():
    gt, preds = car_vehicle()
    result = piq(gt, preds)
    # car .8/1 = .8; truck: one FN -> 0; vehicle: (1 + 2/3) / (2 + 1/2) = 2/3; sky: 2/3.
    expected = {"car": 0.8, "truck": 0.0, "vehicle": 2 / 3, "sky": 2 / 3}
    assert {k: v.piq for k, v in result.per_class.items()} == pytest.approx(expected)
    vehicle = result.per_class["vehicle"]
    assert (vehicle.tp, vehicle.fp, vehicle.fn) == (2, 1, 0)
    assert result.piq == pytest.approx((0.8 + 0 + 2 / 3 + 2 / 3) / 4)  # 0.5333
    assert result.piq_things == pytest.approx((0.8 + 0 + 2 / 3) / 3)
    assert result.piq_stuff == pytest.approx(2 / 3)
    # SQ: .8, 0, (1 + 2/3)/2 = 5/6, 2/3. RQ: 1, 0, 2/2.5 = .8, 1.
    assert result.sq == pytest.approx((0.8 + 0 + 5 / 6 + 2 / 3) / 4)
    assert result.rq == pytest.approx((1 + 0 + 0.8 + 1) / 4)


def test_miou_car_vehicle():
    gt, preds = car_vehicle()
    # vehicle: the union of its predictions is rows 0-2 (30) + row 3 cols 6-9 (4) + rows 4-7 (40)
    # = 74 px, minus drive's void rows 0-1 (20) = 54; truth 28 px lies inside: 28/54.
    # car 16/20, truck 0/8, sky 20/30.
    result = miou(gt, preds)
    expected = {"car": 0.8, "truck": 0.0, "vehicle": 28 / 54, "sky": 2 / 3}
    assert dict(result.per_class) == pytest.approx(expected)
    assert result.miou == pytest.approx(sum(expected.values()) / 4)


def test_pq_car_vehicle():
    gt, preds = car_vehicle()
    result = pq(gt, preds)
    # street: car .8, truck 0, sky 2/3 (nothing overlaps there).
    assert result.per_space["street"].piq == pytest.approx((0.8 + 0 + 2 / 3) / 3)
    # drive, pasted by score: .9 car (TP 1), .8 truck box (TP 2/3), .7 keeps 12 px that touch
    # no vehicle (FP), .6 keeps rows 0-2 minus nothing = 30 px, 20 void -> ignored: 2/3 again.
    assert result.per_space["drive"].per_class["vehicle"].piq == pytest.approx(2 / 3)
    assert result.pq_mean == pytest.approx(((0.8 + 2 / 3) / 3 + 2 / 3) / 2)


def test_label_space_of_prediction_selects_pass():
    # person ≡ pedestrian fused into one class of both spaces; each pass made one prediction.
    person = box((2, 9), (3, 6))  # 32 px
    gt = ground_truth([(1, "person", True, ("street", "drive"))], [(1, person)])
    street_pred = pred(1, person, 0.5, "street")  # IoU 1
    drive_pred = pred(1, box((2, 9), (3, 7)), 0.9, "drive")  # 40 px: IoU 32/40 = .8
    result = pq(gt, [street_pred, drive_pred])
    assert result.per_space["street"].piq == pytest.approx(1.0)
    assert result.per_space["drive"].piq == pytest.approx(0.8)
    # Untagged, both belong to both spaces; pasting keeps the .9 one whole and the .5 one
    # vanishes inside it: .8 in both. PIQ (no pasting) counts the .5 one as an FP:
    # .8 / (1 + 1/2).
    untagged = [Prediction(p.image_id, p.category_id, p.rle, p.score) for p in (street_pred, drive_pred)]
    assert pq(gt, untagged).pq_mean == pytest.approx(0.8)
    assert piq(gt, untagged).piq == pytest.approx(0.8 / 1.5)


def test_evaluate_bundles_all_metrics():
    gt, preds = car_vehicle()
    result = evaluate(gt, preds)
    assert result.piq == piq(gt, preds)
    assert result.miou == miou(gt, preds)
    assert result.pq == pq(gt, preds)
    assert result.ap == mask_ap(gt, preds)
    data = result.to_json()
    assert data["piq"]["per_class"]["vehicle"]["tp"] == 2
    assert set(data["pq"]["per_space"]) == {"street", "drive"}
    # with_ap=False skips only AP
    no_ap = evaluate(gt, preds, with_ap=False)
    assert result.ap is not None and no_ap.ap is None
    assert (no_ap.piq, no_ap.miou, no_ap.pq) == (result.piq, result.miou, result.pq)
    assert no_ap.to_json()["ap"] is None


def test_paste_by_score():
    masks = np.stack([box((0, 4), (0, 4)), box((2, 6), (2, 6))])  # [2, H, W], overlapping 3x3
    pasted = paste_by_score(masks, np.array([0.2, 0.9]))
    assert pasted.shape == masks.shape
    assert not (pasted[0] & pasted[1]).any()
    assert pasted[1].sum() == 25 and pasted[0].sum() == 25 - 9


def test_crowd_prediction_not_false_positive():
    crowd = box((0, 4), (0, 9))
    gt = load_ground_truth(
        {
            "images": [{"id": 1, "height": H, "width": W}],
            "categories": [{"id": 1, "name": "person"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": encode_mask(crowd), "iscrowd": 1},
                {"id": 2, "image_id": 1, "category_id": 1, "segmentation": encode_mask(box((6, 9), (0, 3)))},
            ],
        }
    )
    # Mostly inside the crowd region: neither TP nor FP; the crowd itself is not an FN.
    result = piq(gt, [pred(1, box((0, 5), (0, 3)), 0.9), pred(1, box((6, 9), (0, 3)), 0.8)])
    person = result.per_class["person"]
    assert (person.tp, person.fp, person.fn) == (1, 0, 0)
