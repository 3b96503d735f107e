"""RESI's metrics (SPEC §5): PIQ, multi-label mIoU, PQ per label space, COCO mask AP, overlap recall.

PIQ and the multi-label mIoU/PQ definitions are this project's own (docs/METRICS.md): the
paper's formulas were not available. Everything is a pure function of COCO RLEs or numpy
arrays; `evaluate` decodes each image once and feeds every metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from resi_core.coco import GroundTruth, Prediction
from resi_core.metrics.ap import APResult, mask_ap
from resi_core.metrics.miou import MIoUResult, image_iou_counts, miou, summarize_iou
from resi_core.metrics.overlap import (
    OverlapRecallResult,
    PairCounts,
    image_overlap_counts,
    overlap_recall,
    summarize_overlap,
)
from resi_core.metrics.piq import (
    ClassPIQ,
    PIQResult,
    QualityCounts,
    image_matches,
    piq,
    piq_of_masks,
    summarize,
)
from resi_core.metrics.pq import PQAccumulator, PQResult, paste_by_score, pq
from resi_core.metrics.segments import class_names, iter_image_segments

__all__ = [
    "APResult",
    "ClassPIQ",
    "EvalResult",
    "MIoUResult",
    "OverlapRecallResult",
    "PIQResult",
    "PQResult",
    "evaluate",
    "mask_ap",
    "miou",
    "overlap_recall",
    "paste_by_score",
    "piq",
    "piq_of_masks",
    "pq",
]


@dataclass(frozen=True)
class EvalResult:
    piq: PIQResult
    miou: MIoUResult
    pq: PQResult
    ap: APResult | None  # None when the ground truth has no thing annotation, or with_ap=False
    overlap: OverlapRecallResult
    num_images: int
    num_predictions: int

    def to_json(self) -> dict:
        return {
            "num_images": self.num_images,
            "num_predictions": self.num_predictions,
            "piq": self.piq.to_json(),
            "miou": self.miou.to_json(),
            "pq": self.pq.to_json(),
            "ap": None if self.ap is None else self.ap.to_json(),
            "overlap": self.overlap.to_json(),
        }


def evaluate(gt: GroundTruth, predictions: Sequence[Prediction], *, with_ap: bool = True) -> EvalResult:
    """Every metric of validated predictions (coco.load_predictions) against the ground truth.
    `with_ap=False` skips mask AP (a pycocotools pass) for callers that score AP on another list."""
    isthing = {i: c.isthing for i, c in gt.categories.items()}
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    quality = {i: QualityCounts() for i in gt.categories}
    iou = {i: (0, 0) for i in gt.categories}
    pairs: dict[tuple[int, int], PairCounts] = {}
    pq_sums = PQAccumulator(gt)
    for seg in iter_image_segments(gt, predictions):
        counts_by_class, matched = image_matches(seg, isthing, spaces)
        for c, counts in counts_by_class.items():
            quality[c] += counts
        for key, found in image_overlap_counts(seg, isthing, spaces, matched).items():
            pairs.setdefault(key, PairCounts())
            pairs[key] += found
        for c, (inter, union) in image_iou_counts(seg, spaces).items():
            iou[c] = (iou[c][0] + inter, iou[c][1] + union)
        pq_sums.add(seg)
    names = class_names(gt)
    return EvalResult(
        piq=summarize(quality, names, isthing),
        miou=summarize_iou(iou, names),
        pq=pq_sums.result(),
        ap=mask_ap(gt, predictions) if with_ap else None,
        overlap=summarize_overlap(pairs, names),
        num_images=len(gt.images),
        num_predictions=len(predictions),
    )
