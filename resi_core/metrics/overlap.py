"""Overlap recall (SPEC §5): does a model propose masks of several label spaces on the same pixels?

Among ground-truth pairs of masks of different label spaces that share at least half of the
smaller mask's pixels (person / face, car / wheel, car / vehicle), the share where both masks are
matched by a prediction of their own class at IoU > 0.5. "Matched" is PIQ's matching
(metrics/piq.py: greedy by score, each ground truth at most once, void out of the union), so a
pair counts as found exactly when both of its masks are PIQ true positives. This is the project's
own measure; the RESI paper does not define it.

Legend: G ground-truth segments of one image, P pixels of the image (flattened).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from resi_core.coco import GroundTruth, Prediction
from resi_core.metrics.piq import image_matches
from resi_core.metrics.segments import ImageSegments, class_names, iter_image_segments, overlap

# A pair overlaps when it shares at least this fraction of the smaller mask's pixels.
PAIR_SHARE = 0.5


@dataclass
class PairCounts:
    """Overlapping ground-truth pairs and how many of them had both masks matched."""

    pairs: int = 0
    found: int = 0

    def __iadd__(self, other: PairCounts) -> PairCounts:
        self.pairs += other.pairs
        self.found += other.found
        return self

    @property
    def recall(self) -> float | None:
        return self.found / self.pairs if self.pairs else None


@dataclass(frozen=True)
class OverlapRecallResult:
    """recall: found / pairs over the dataset (None when the ground truth has no overlapping pair);
    per_pair: the same per pair of classes, named "A / B" in category-id order."""

    recall: float | None
    pairs: int
    found: int
    per_pair: Mapping[str, PairCounts] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "overlap_recall": self.recall,
            "pairs": self.pairs,
            "found": self.found,
            "per_pair": {k: {"pairs": v.pairs, "found": v.found, "recall": v.recall} for k, v in self.per_pair.items()},
        }


def overlapping_pairs(
    gt_masks: np.ndarray, gt_classes: np.ndarray, gt_crowd: np.ndarray, class_spaces: Mapping[int, Sequence[str]]
) -> list[tuple[int, int]]:
    """Index pairs (i, j), i < j, of one image's ground truths that count for overlap recall.

    gt_masks [G, H, W] bool, gt_classes [G] class keys, gt_crowd [G] bool. A pair counts when
    neither mask is crowd or empty, their classes share no label space (so they come from
    different label spaces: inside one space masks never overlap, and a class of two fused spaces
    is one class), and they share at least half of the smaller mask's pixels.
    """
    flat = gt_masks.reshape(len(gt_masks), -1)  # [G, P]
    area = flat.sum(axis=1)  # [G]
    shared = overlap(flat, flat)  # [G, G]
    spaces = [set(class_spaces.get(int(c), ())) for c in gt_classes.tolist()]
    pairs = []
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            if gt_crowd[i] or gt_crowd[j] or not area[i] or not area[j] or spaces[i] & spaces[j]:
                continue
            if shared[i, j] >= PAIR_SHARE * min(area[i], area[j]):
                pairs.append((i, j))
    return pairs


def image_overlap_counts(
    seg: ImageSegments,
    isthing: Mapping[int, bool],
    class_spaces: Mapping[int, Sequence[str]],
    matched: np.ndarray | None = None,
) -> dict[tuple[int, int], PairCounts]:
    """(class key, class key), in ascending order -> pair counts for one image.

    `matched` [G] bool: which ground truths PIQ matched (`piq.image_matches`), when the caller has it."""
    if matched is None:
        matched = image_matches(seg, isthing, class_spaces)[1]
    out: dict[tuple[int, int], PairCounts] = {}
    for i, j in overlapping_pairs(seg.gt_masks, seg.gt_classes, seg.gt_crowd, class_spaces):
        key = tuple(sorted((int(seg.gt_classes[i]), int(seg.gt_classes[j]))))
        out.setdefault(key, PairCounts())
        out[key] += PairCounts(1, int(matched[i] and matched[j]))
    return out


def summarize_overlap(counts: Mapping[tuple[int, int], PairCounts], names: Mapping[int, str]) -> OverlapRecallResult:
    total = PairCounts()
    per_pair: dict[str, PairCounts] = {}
    for (a, b), c in sorted(counts.items()):
        total += c
        per_pair[f"{names[a]} / {names[b]}"] = c
    return OverlapRecallResult(total.recall, total.pairs, total.found, per_pair)


def overlap_recall(gt: GroundTruth, predictions: Sequence[Prediction]) -> OverlapRecallResult:
    """Overlap recall of validated predictions (coco.load_predictions) against the ground truth."""
    isthing = {i: c.isthing for i, c in gt.categories.items()}
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    totals: dict[tuple[int, int], PairCounts] = {}
    for seg in iter_image_segments(gt, predictions):
        for key, counts in image_overlap_counts(seg, isthing, spaces).items():
            totals.setdefault(key, PairCounts())
            totals[key] += counts
    return summarize_overlap(totals, class_names(gt))
