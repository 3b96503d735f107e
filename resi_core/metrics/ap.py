"""COCO mask AP (SPEC §5) on the thing classes, computed by pycocotools' COCOeval.

Predictions may overlap. COCO objects are built in memory, and pycocotools' printing is
silenced. Void has no meaning for AP; crowd regions are handled by COCOeval as usual.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from formats.coco import GroundTruth, Prediction


@dataclass(frozen=True)
class APResult:
    ap: float  # AP averaged over IoU 0.50:0.05:0.95, all areas, maxDets 100
    ap50: float
    ap75: float
    ap_small: float  # -1 where COCOeval has no ground truth of that size
    ap_medium: float
    ap_large: float

    def to_json(self) -> dict:
        return asdict(self)


def _coco_ground_truth(gt: GroundTruth, thing_ids: set[int]) -> COCO:
    dataset = {
        "images": [{"id": i.id, "height": i.height, "width": i.width} for i in gt.images.values()],
        "categories": [{"id": c.id, "name": c.name} for c in gt.categories.values() if c.id in thing_ids],
        "annotations": [
            {
                "id": n + 1,  # fresh ids: COCOeval indexes by id and needs them unique and non-zero
                "image_id": a.image_id,
                "category_id": a.category_id,
                "segmentation": a.rle,
                "area": a.area,
                "iscrowd": int(a.iscrowd),
            }
            for n, a in enumerate(x for x in gt.annotations if x.category_id in thing_ids)
        ],
    }
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def mask_ap(gt: GroundTruth, predictions: Sequence[Prediction]) -> APResult | None:
    """COCO mask AP on thing classes; None when the ground truth has no thing annotation."""
    thing_ids = {i for i, c in gt.categories.items() if c.isthing}
    if not any(a.category_id in thing_ids and not a.iscrowd for a in gt.annotations):
        return None
    results = [p.to_json() for p in predictions if p.category_id in thing_ids]
    if not results:
        return APResult(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    coco_gt = _coco_ground_truth(gt, thing_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        evaluator.params.catIds = sorted(thing_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:6]]
    return APResult(*stats)
