"""Our metrics against independent implementations: torchmetrics, a panopticapi-style PQ, COCOeval, a confusion matrix."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy import ndimage
from torchmetrics.detection import PanopticQuality

from resi_core.coco import (
    Prediction,
    encode_mask,
    load_ground_truth,
    panoptic_to_instances,
    read_panoptic_png,
)
from resi_core.metrics import mask_ap, miou, piq, pq
from tests.shared_data import COCO128, needs_coco128

THINGS, STUFFS = (1, 2, 3), (10, 11)


# ----------------------------------------------------------------------------- random panoptic maps


def voronoi(rng: np.random.Generator, seeds: np.ndarray, h: int, w: int) -> np.ndarray:
    """Cell index [H, W] of the nearest seed (seeds [N, 2] as y, x)."""
    yy, xx = np.mgrid[:h, :w]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2  # [H, W, N]
    return d.argmin(axis=-1)


def random_pair(rng: np.random.Generator, h: int = 40, w: int = 56):
    """A ground truth and a perturbed prediction, both as (category, instance) maps [H, W, 2].

    The prediction moves the cells a little and relabels some, so IoUs land on both sides of
    0.5. Ground truth has a void patch (category 0, unknown to both metrics); the prediction
    labels every pixel, because torchmetrics treats unlabeled *predicted* pixels differently
    from COCO panoptic (it removes them from the union), while ours follows COCO.
    """
    n = int(rng.integers(5, 12))
    seeds = rng.uniform([0, 0], [h, w], size=(n, 2))
    cats = rng.choice(THINGS + STUFFS, size=n)
    gt_cell = voronoi(rng, seeds, h, w)
    pred_cell = voronoi(rng, seeds + rng.normal(0, 3, size=seeds.shape), h, w)
    pred_cats = np.where(rng.random(n) < 0.2, rng.choice(THINGS + STUFFS, size=n), cats)
    gt = np.stack([cats[gt_cell], gt_cell + 1], axis=-1)
    y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
    gt[y : y + int(rng.integers(3, 12)), x : x + int(rng.integers(3, 12))] = 0
    return gt, np.stack([pred_cats[pred_cell], pred_cell + 1], axis=-1)


def to_coco(gt_maps: list[np.ndarray], pred_maps: list[np.ndarray], rng: np.random.Generator):
    """(category, instance) maps -> our ground truth and predictions (random scores)."""
    h, w = gt_maps[0].shape[:2]
    images, annotations, predictions = [], [], []
    for image_id, (gt, pr) in enumerate(zip(gt_maps, pred_maps, strict=True), start=1):
        images.append(
            {"id": image_id, "height": h, "width": w, "void": {"default": encode_mask(gt[..., 0] == 0)}}
        )
        for cat, inst in np.unique(gt.reshape(-1, 2), axis=0).tolist():
            if cat:
                m = (gt[..., 0] == cat) & (gt[..., 1] == inst)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cat,
                        "segmentation": encode_mask(m),
                        "iscrowd": 0,
                    }
                )
        for cat, inst in np.unique(pr.reshape(-1, 2), axis=0).tolist():
            m = (pr[..., 0] == cat) & (pr[..., 1] == inst)
            predictions.append(Prediction(image_id, cat, encode_mask(m), float(rng.random())))
    categories = [{"id": c, "name": f"c{c}", "isthing": int(c in THINGS)} for c in THINGS + STUFFS]
    gt = load_ground_truth({"images": images, "annotations": annotations, "categories": categories})
    return gt, predictions


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_piq_equals_torchmetrics_pq_without_overlaps(seed):
    rng = np.random.default_rng(seed)
    pairs = [random_pair(rng) for _ in range(4)]
    gt_maps, pred_maps = [g for g, _ in pairs], [p for _, p in pairs]
    reference = PanopticQuality(
        things=set(THINGS), stuffs=set(STUFFS), return_sq_and_rq=True, return_per_class=True
    )
    reference.update(torch.from_numpy(np.stack(pred_maps)), torch.from_numpy(np.stack(gt_maps)))
    per_class = reference.compute()  # [C, 3] pq, sq, rq; things then stuffs, each sorted
    tp, fp, fn = reference.true_positives, reference.false_positives, reference.false_negatives
    scored = (tp + fp + fn) > 0

    gt, predictions = to_coco(gt_maps, pred_maps, rng)
    ours = piq(gt, predictions)
    order = sorted(THINGS) + sorted(STUFFS)
    expected = {f"c{c}": float(per_class[i, 0]) for i, c in enumerate(order) if scored[i]}
    assert {k: v.piq for k, v in ours.per_class.items()} == pytest.approx(expected, abs=1e-6)
    counts = {f"c{c}": (int(tp[i]), int(fp[i]), int(fn[i])) for i, c in enumerate(order) if scored[i]}
    assert {k: (v.tp, v.fp, v.fn) for k, v in ours.per_class.items()} == counts
    pq_avg, sq_avg, rq_avg = (float(v) for v in per_class[scored].mean(dim=0))
    assert (ours.piq, ours.sq, ours.rq) == pytest.approx((pq_avg, sq_avg, rq_avg), abs=1e-6)
    # Nothing overlaps, so pasting changes nothing and the label space's PQ is the same number.
    assert pq(gt, predictions).pq_mean == pytest.approx(pq_avg, abs=1e-6)


def test_miou_equals_confusion_matrix_without_overlaps():
    rng = np.random.default_rng(7)
    pairs = [random_pair(rng) for _ in range(4)]
    gt, predictions = to_coco([g for g, _ in pairs], [p for _, p in pairs], rng)
    classes = THINGS + STUFFS
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)  # [truth, prediction]
    for g, p in pairs:
        labeled = g[..., 0] > 0  # void pixels are ignored, as an ignore label is
        for t, q in zip(g[..., 0][labeled].tolist(), p[..., 0][labeled].tolist(), strict=True):
            confusion[index[t], index[q]] += 1
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    expected = {f"c{c}": inter[i] / union[i] for i, c in enumerate(classes) if union[i] > 0}
    result = miou(gt, predictions)
    assert dict(result.per_class) == pytest.approx(expected, abs=1e-12)
    assert result.miou == pytest.approx(np.mean(list(expected.values())), abs=1e-12)


# ----------------------------------------------------------------------------- coco128 panoptic


def reference_pq(gt_ids, gt_segments, pred_ids, pred_segments) -> dict[int, list[float]]:
    """COCO panopticapi's pq_compute_single_core, restated: category -> [iou_sum, tp, fp, fn]."""
    offset = 256**3
    stats: dict[int, list[float]] = {}
    gt_area = dict(zip(*np.unique(gt_ids, return_counts=True), strict=True))
    pred_area = dict(zip(*np.unique(pred_ids, return_counts=True), strict=True))
    pairs, counts = np.unique(gt_ids.astype(np.int64) * offset + pred_ids, return_counts=True)
    inter = {(int(p // offset), int(p % offset)): int(n) for p, n in zip(pairs, counts, strict=True)}
    gt_matched, pred_matched = set(), set()
    for (g, p), n in inter.items():
        if g not in gt_segments or p not in pred_segments or gt_segments[g]["iscrowd"]:
            continue
        if gt_segments[g]["category_id"] != pred_segments[p]["category_id"]:
            continue
        iou = n / (pred_area[p] + gt_area[g] - n - inter.get((0, p), 0))
        if iou > 0.5:
            s = stats.setdefault(gt_segments[g]["category_id"], [0.0, 0, 0, 0])
            s[0] += iou
            s[1] += 1
            gt_matched.add(g)
            pred_matched.add(p)
    crowd = {}
    for g, info in gt_segments.items():
        if g in gt_matched:
            continue
        if info["iscrowd"]:
            crowd[info["category_id"]] = g
            continue
        stats.setdefault(info["category_id"], [0.0, 0, 0, 0])[3] += 1
    for p, info in pred_segments.items():
        if p in pred_matched:
            continue
        ignored = inter.get((0, p), 0)
        if info["category_id"] in crowd:
            ignored += inter.get((crowd[info["category_id"]], p), 0)
        if ignored / pred_area[p] > 0.5:
            continue
        stats.setdefault(info["category_id"], [0.0, 0, 0, 0])[2] += 1
    return stats


def perturb_panoptic(rng, gt_ids, gt_segments, categories):
    """A prediction id map built from the ground truth: shifted, eroded, dropped, relabeled.

    Ids stay unique per pixel, so nothing overlaps; every stuff class gets one segment per
    image, as the panoptic format has it.
    """
    things = [c["id"] for c in categories if c["isthing"]]
    stuffs = [c["id"] for c in categories if not c["isthing"]]
    dy, dx = rng.integers(-4, 5, size=2)
    shifted = np.zeros_like(gt_ids)
    h, w = gt_ids.shape
    shifted[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = gt_ids[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    pred_ids = np.zeros_like(gt_ids)
    pred_segments, stuff_ids = {}, {}
    for seg_id, info in gt_segments.items():
        mask = shifted == seg_id
        roll = rng.random()
        if roll < 0.15:
            continue  # dropped
        if roll < 0.35:
            mask = ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 8)))
        cat = info["category_id"]
        if rng.random() < 0.15:
            cat = int(rng.choice(things if cat in things else stuffs))
        if cat in stuffs:
            new_id = stuff_ids.setdefault(cat, 1_000_000 + cat)
        else:
            new_id = len(pred_segments) + 1
        pred_ids[mask] = new_id
        pred_segments[new_id] = {"category_id": cat}
    present = set(np.unique(pred_ids).tolist())
    return pred_ids, {k: v for k, v in pred_segments.items() if k in present}


@needs_coco128
def test_piq_equals_panopticapi_pq_on_coco128():
    panoptic = json.loads((COCO128 / "panoptic" / "panoptic_train2017.json").read_text())
    panoptic["annotations"] = panoptic["annotations"][:30]
    png_dir = COCO128 / "panoptic" / "panoptic_train2017"
    gt = load_ground_truth(panoptic_to_instances(panoptic, png_dir))
    rng = np.random.default_rng(0)
    totals: dict[int, list[float]] = {}
    predictions = []
    for entry in panoptic["annotations"]:
        gt_ids = read_panoptic_png(png_dir / entry["file_name"])
        gt_segments = {s["id"]: s for s in entry["segments_info"]}
        pred_ids, pred_segments = perturb_panoptic(rng, gt_ids, gt_segments, panoptic["categories"])
        for cat, s in reference_pq(gt_ids, gt_segments, pred_ids, pred_segments).items():
            totals[cat] = [a + b for a, b in zip(totals.get(cat, [0.0, 0, 0, 0]), s, strict=True)]
        for seg_id, info in pred_segments.items():
            rle = encode_mask(pred_ids == seg_id)
            predictions.append(Prediction(entry["image_id"], info["category_id"], rle, float(rng.random())))

    names = {c["id"]: c["name"] for c in panoptic["categories"]}
    expected = {
        names[c]: iou / (tp + fp / 2 + fn / 2) for c, (iou, tp, fp, fn) in totals.items() if tp + fp + fn
    }
    ours = piq(gt, predictions)
    assert {k: (v.tp, v.fp, v.fn) for k, v in ours.per_class.items()} == {
        names[c]: tuple(s[1:]) for c, s in totals.items() if sum(s[1:])
    }
    assert {k: v.piq for k, v in ours.per_class.items()} == pytest.approx(expected, abs=1e-9)
    assert ours.piq == pytest.approx(np.mean(list(expected.values())), abs=1e-9)
    assert sum(v.fn for v in ours.per_class.values()) > 0 and ours.piq_stuff is not None


# ----------------------------------------------------------------------------- coco128 instances AP


def perturbed_instances(rng, gt) -> list[Prediction]:
    """Predictions from the ground-truth instances: shifted, eroded, dropped, relabeled, plus noise."""
    from resi_core.coco import decode_rle

    cat_ids = sorted(gt.categories)
    predictions = []
    for ann in gt.annotations:
        if ann.iscrowd or rng.random() < 0.15:
            continue
        mask = np.roll(decode_rle(ann.rle), tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        if rng.random() < 0.3:
            mask = ndimage.binary_erosion(mask, iterations=int(rng.integers(1, 4)))
        cat = int(rng.choice(cat_ids)) if rng.random() < 0.1 else ann.category_id
        predictions.append(Prediction(ann.image_id, cat, encode_mask(mask), float(rng.random())))
        if rng.random() < 0.2:  # an overlapping duplicate with a lower score
            predictions.append(Prediction(ann.image_id, cat, encode_mask(mask), float(rng.random()) * 0.5))
    return predictions


@needs_coco128
def test_ap_equals_cocoeval_on_coco128():
    data = json.loads((COCO128 / "annotations_instances" / "instances_train2017.json").read_text())
    keep = {img["id"] for img in data["images"][:60]}
    data["images"] = [i for i in data["images"] if i["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    gt = load_ground_truth(data)
    predictions = perturbed_instances(np.random.default_rng(0), gt)

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(data))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([p.to_json() for p in predictions])
        direct = COCOeval(coco_gt, coco_dt, iouType="segm")
        direct.evaluate()
        direct.accumulate()
        direct.summarize()
    ours = mask_ap(gt, predictions)
    assert 0.2 < ours.ap < 0.9  # the perturbation leaves a non-trivial AP
    assert (ours.ap, ours.ap50, ours.ap75) == pytest.approx(tuple(direct.stats[:3]), abs=1e-12)
