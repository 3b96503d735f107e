"""PQ per label space (SPEC §5): COCO panoptic quality on each space's non-overlapping output.

For label space s: the ground truth is the annotations of s's classes with s's void; the
prediction is what s's decoder pass produced (`label_space == s`, or, where that is
missing, every prediction whose class belongs to s), made non-overlapping by pasting
segments in descending score order (a pixel goes to the highest-scoring segment that
covers it; a segment left with no pixels disappears), as panoptic inference does. Then COCO
PQ, which is the PIQ engine on non-overlapping input. The mixed PQ is the mean over spaces.

Ground truth of one label space should not overlap (a panoptic file cannot), but a COCO instances
file often does (coco128's: 91 of 128 images). panopticapi's converter refuses such a file; here the
pixels that two ground-truth masks of the space claim are taken out of both and made void for that
space's PQ (who owns them is unknown), and the result counts them (`PQResult.gt_overlaps`), so the
caller can say so or refuse. A perfect prediction then scores 1.0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from formats.coco import GroundTruth, Prediction
from resi_core.metrics.piq import PIQResult, QualityCounts, image_quality_counts, summarize
from resi_core.metrics.segments import ImageSegments, class_names, iter_image_segments


@dataclass(frozen=True)
class PQResult:
    per_space: Mapping[str, PIQResult]  # COCO PQ/SQ/RQ of each label space
    pq_mean: float | None  # mean of the spaces' PQ (spaces with at least one class scored)
    # label space -> (images, pixels) where its ground truth overlapped itself (made void for its PQ)
    gt_overlaps: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"pq_mean": self.pq_mean, "per_space": {s: r.to_json() for s, r in self.per_space.items()},
                "gt_overlaps": {s: {"images": n, "pixels": px} for s, (n, px) in self.gt_overlaps.items()}}


def paste_by_score(masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Overlapping masks [D, H, W] bool -> non-overlapping [D, H, W]: each pixel kept by its best-scoring mask."""
    out = np.zeros_like(masks)
    taken = np.zeros(masks.shape[1:], dtype=bool)
    for d in np.argsort(-scores, kind="stable"):
        out[d] = masks[d] & ~taken
        taken |= out[d]
    return out


def space_view(seg: ImageSegments, space: str, space_classes: set[int]) -> tuple[ImageSegments, int]:
    """One label space's ground truth, with the pixels two of its masks claim made void, and its pasted,
    non-overlapping predictions; and how many pixels were made void so."""
    gt_rows = np.isin(seg.gt_classes, list(space_classes))
    pred_rows = np.array(
        [
            (s == space) if s is not None else c in space_classes
            for s, c in zip(seg.pred_spaces, seg.pred_classes.tolist(), strict=True)
        ],
        dtype=bool,
    )
    view = seg.select(gt_rows, pred_rows)
    view = replace(view, pred_masks=paste_by_score(view.pred_masks, view.pred_scores))
    if len(view.gt_masks) < 2:
        return view, 0
    contested = view.gt_masks.sum(axis=0, dtype=np.int32) > 1  # [H, W]
    n = int(contested.sum())
    if not n:
        return view, 0
    void = seg.space_void.get(space)
    return replace(view, gt_masks=view.gt_masks & ~contested,
                   space_void={**view.space_void, space: contested if void is None else void | contested}), n


def pq(gt: GroundTruth, predictions: Sequence[Prediction]) -> PQResult:
    """PQ of every label space of the ground truth, and their mean."""
    accumulator = PQAccumulator(gt)
    for seg in iter_image_segments(gt, predictions):
        accumulator.add(seg)
    return accumulator.result()


class PQAccumulator:
    """Sums per-space PQ counts image by image, so evaluate() can decode each image once."""

    def __init__(self, gt: GroundTruth) -> None:
        self._names = class_names(gt)
        self._isthing = {i: c.isthing for i, c in gt.categories.items()}
        self._classes = {
            s: {i for i, c in gt.categories.items() if s in c.label_spaces} for s in gt.label_spaces
        }
        self._totals = {s: {i: QualityCounts() for i in cs} for s, cs in self._classes.items()}
        self._overlaps: dict[str, tuple[int, int]] = {}

    def add(self, seg: ImageSegments) -> None:
        for space, classes in self._classes.items():
            view, contested = space_view(seg, space, classes)
            if contested:
                images, pixels = self._overlaps.get(space, (0, 0))
                self._overlaps[space] = (images + 1, pixels + contested)
            own_void = {c: (space,) for c in classes}
            for c, counts in image_quality_counts(view, self._isthing, own_void).items():
                self._totals[space][c] += counts

    def result(self) -> PQResult:
        per_space = {s: summarize(t, self._names, self._isthing) for s, t in self._totals.items()}
        scored = [r.piq for r in per_space.values() if r.piq is not None]
        return PQResult(per_space, float(np.mean(scored)) if scored else None, dict(self._overlaps))
