"""Multi-label mIoU (SPEC §5), this project's definition.

IoU_c = |P_c ∩ G_c| / |P_c ∪ G_c| with both sums over the whole dataset, where P_c and G_c
are per image the unions of the predicted and ground-truth masks of class c (crowd regions
count as ground truth). Pixels void for c are dropped from P_c, as an ignore label is in a
confusion matrix. mIoU is the mean over classes whose union is not empty. When no masks
overlap this is the usual confusion-matrix mIoU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from formats.coco import GroundTruth, Prediction
from resi_core.metrics.segments import ImageSegments, class_names, iter_image_segments


@dataclass(frozen=True)
class MIoUResult:
    miou: float | None
    per_class: Mapping[str, float]  # IoU of every class with a non-empty union

    def to_json(self) -> dict:
        return {"miou": self.miou, "per_class_iou": dict(self.per_class)}


def image_iou_counts(
    seg: ImageSegments, class_spaces: Mapping[int, Sequence[str]]
) -> dict[int, tuple[int, int]]:
    """class -> (|P_c ∩ G_c|, |P_c ∪ G_c|) pixel counts for one image."""
    out = {}
    for c in np.union1d(seg.gt_classes, seg.pred_classes).tolist():
        window = seg.class_window(c)
        pred = seg.pred_crop(seg.pred_classes == c, window).any(axis=0)  # [S]
        truth = seg.gt_crop(seg.gt_classes == c, window).any(axis=0)  # [S]
        void = seg.class_void(c, class_spaces.get(c, ()), window)
        if void is not None:
            pred &= ~void
        out[c] = (int(np.count_nonzero(pred & truth)), int(np.count_nonzero(pred | truth)))
    return out


def summarize_iou(counts: Mapping[int, tuple[int, int]], names: Mapping[int, str]) -> MIoUResult:
    per_class = {names[c]: inter / union for c, (inter, union) in counts.items() if union > 0}
    return MIoUResult(float(np.mean(list(per_class.values()))) if per_class else None, per_class)


def miou(gt: GroundTruth, predictions: Sequence[Prediction]) -> MIoUResult:
    """Multi-label mIoU of validated predictions against the ground truth."""
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    totals = {i: (0, 0) for i in gt.categories}
    for seg in iter_image_segments(gt, predictions):
        for c, (inter, union) in image_iou_counts(seg, spaces).items():
            totals[c] = (totals[c][0] + inter, totals[c][1] + union)
    return summarize_iou(totals, class_names(gt))
