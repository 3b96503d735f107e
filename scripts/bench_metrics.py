"""Time our PIQ and PQ against torchmetrics' PanopticQuality on the coco128 panoptic set.

Usage: .venv/bin/python scripts/bench_metrics.py [--data ../shared/data/coco128] [--images 100]

The prediction is the ground truth perturbed (shifted, some segments dropped or relabeled),
non-overlapping, so our PIQ and PQ agree; torchmetrics' value differs (see the note printed).
torchmetrics needs same-sized batches, so it gets one image per update call.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchmetrics.detection import PanopticQuality

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formats.coco import Prediction, load_ground_truth  # noqa: E402
from formats.panoptic import panoptic_to_instances  # noqa: E402
from formats.panoptic import read_png as read_panoptic_png  # noqa: E402
from formats.rle import encode_mask  # noqa: E402
from resi_core.metrics import piq, pq  # noqa: E402


def perturb(rng: np.random.Generator, ids: np.ndarray, segments: list[dict], categories: dict[int, bool]):
    """Ground-truth id map -> (category map, instance map) of a plausible prediction, [H, W] each."""
    things = [c for c, t in categories.items() if t]
    stuffs = [c for c, t in categories.items() if not t]
    shifted = np.roll(ids, tuple(rng.integers(-4, 5, size=2)), axis=(0, 1))
    cat_map = np.zeros_like(ids)
    inst_map = np.zeros_like(ids)
    for n, seg in enumerate(segments, start=1):
        if rng.random() < 0.15:
            continue
        cat = seg["category_id"]
        if rng.random() < 0.15:
            cat = int(rng.choice(things if categories[cat] else stuffs))
        mask = shifted == seg["id"]
        cat_map[mask], inst_map[mask] = cat, n
    return cat_map, inst_map


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    parser.add_argument("--images", type=int, default=100)
    args = parser.parse_args(argv)
    pan_dir = Path(args.data) / "panoptic"
    panoptic = json.loads((pan_dir / "panoptic_train2017.json").read_text())
    panoptic["annotations"] = panoptic["annotations"][: args.images]
    png_dir = pan_dir / "panoptic_train2017"
    categories = {c["id"]: bool(c["isthing"]) for c in panoptic["categories"]}

    gt = load_ground_truth(panoptic_to_instances(panoptic, png_dir))
    rng = np.random.default_rng(0)
    pairs, predictions = [], []
    for entry in panoptic["annotations"]:
        ids = read_panoptic_png(png_dir / entry["file_name"])
        cat_map, inst_map = perturb(rng, ids, entry["segments_info"], categories)
        for cat, inst in np.unique(np.stack([cat_map, inst_map]).reshape(2, -1), axis=1).T.tolist():
            if cat:
                rle = encode_mask((cat_map == cat) & (inst_map == inst))
                predictions.append(Prediction(entry["image_id"], cat, rle, float(rng.random())))
        seg_cat = {s["id"]: s["category_id"] for s in entry["segments_info"]}
        # torchmetrics has no crowd notion: crowd ground truth is passed as void (category 0).
        crowd = {s["id"] for s in entry["segments_info"] if s["iscrowd"]}
        uniq, inverse = np.unique(ids, return_inverse=True)
        lookup = np.array([0 if i in crowd else seg_cat.get(i, 0) for i in uniq.tolist()])
        gt_cat = lookup[inverse].reshape(ids.shape)
        pairs.append((np.stack([gt_cat, ids], -1), np.stack([cat_map, inst_map], -1)))
    print(
        f"{len(pairs)} images, {len(gt.annotations)} ground-truth and {len(predictions)} predicted segments"
    )

    start = time.perf_counter()
    ours_piq = piq(gt, predictions)
    t_piq = time.perf_counter() - start
    start = time.perf_counter()
    ours_pq = pq(gt, predictions)
    t_pq = time.perf_counter() - start

    reference = PanopticQuality(
        things={c for c, t in categories.items() if t},
        stuffs={c for c, t in categories.items() if not t},
        allow_unknown_preds_category=True,
    )
    start = time.perf_counter()
    for target, prediction in pairs:
        reference.update(torch.from_numpy(prediction[None]), torch.from_numpy(target[None]))
    tm_pq = float(reference.compute())
    t_tm = time.perf_counter() - start

    print(f"ours PIQ         {ours_piq.piq:.6f}  {t_piq:7.2f} s")
    print(f"ours PQ          {ours_pq.pq_mean:.6f}  {t_pq:7.2f} s")
    print(f"torchmetrics PQ  {tm_pq:.6f}  {t_tm:7.2f} s")
    print(
        "torchmetrics departs from COCO panopticapi where the prediction leaves pixels unlabeled (dropped"
        " segments here): it removes them from the union and does not count a ground-truth segment that is"
        " mostly unlabeled in the prediction as an FN. Ours follows panopticapi (see the tests)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
