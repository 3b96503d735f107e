"""PIQ, panoptic instance quality (SPEC §5): this project's own definition, not the paper's.

Per class c over the whole dataset: things are matched greedily by descending score at
IoU > 0.5 (each ground truth at most once); for stuff, all segments of c in an image are
merged on each side first. PIQ_c = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|). Void and crowd act
as in COCO panoptic. Masks may overlap on both sides; when nothing overlaps PIQ is COCO PQ,
which is why pq.py reuses this engine.

Legend: P pixels, G ground-truth segments of one class, D predicted segments of that class.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from resi_core.coco import DEFAULT_SPACE, GroundTruth, Prediction
from resi_core.metrics.segments import ImageSegments, class_names, from_masks, iter_image_segments, overlap

MATCH_IOU = 0.5
# A prediction more than this fraction void-or-crowd is not a false positive (COCO panoptic).
IGNORE_FRACTION = 0.5


@dataclass
class QualityCounts:
    """Running sums for one class: Σ IoU over true positives, and TP/FP/FN counts."""

    iou_sum: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __iadd__(self, other: QualityCounts) -> QualityCounts:
        self.iou_sum += other.iou_sum
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        return self


@dataclass(frozen=True)
class ClassPIQ:
    piq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    isthing: bool


@dataclass(frozen=True)
class PIQResult:
    """Dataset (or single-image) quality. Means are over classes with TP+FP+FN > 0; None if none."""

    piq: float | None
    piq_things: float | None
    piq_stuff: float | None
    sq: float | None
    rq: float | None
    per_class: Mapping[str, ClassPIQ]

    def to_json(self) -> dict:
        return {
            "piq": self.piq,
            "piq_things": self.piq_things,
            "piq_stuff": self.piq_stuff,
            "sq": self.sq,
            "rq": self.rq,
            "per_class": {name: asdict(c) for name, c in self.per_class.items()},
        }


def match_class(
    pred_masks: np.ndarray,
    pred_scores: np.ndarray,
    gt_masks: np.ndarray,
    void: np.ndarray | None,
    crowd: np.ndarray | None,
    isthing: bool,
) -> tuple[QualityCounts, np.ndarray]:
    """Match one class's segments in one image: (counts, which ground truths were matched).

    pred_masks [D, S] bool, pred_scores [D], gt_masks [G, S] bool (non-crowd), void [S] bool
    (unknown pixels, disjoint from gt_masks), crowd [S] bool (this class's crowd regions), on
    S pixels: all P of the image, or any subset holding every mask of the class.
    Empty masks are ignored on both sides. The matched flags are bool [G], aligned with
    `gt_masks`'s rows (an empty row is never matched); for stuff, every non-empty row shares
    the outcome of the class's merged segment.
    """
    rows = np.flatnonzero(gt_masks.any(axis=1))  # [G'] the non-empty ground truths
    matched_rows = np.zeros(len(gt_masks), dtype=bool)  # [G]
    if not isthing:
        pred_masks = pred_masks.any(axis=0, keepdims=True) if len(pred_masks) else pred_masks
        gt_masks = gt_masks.any(axis=0, keepdims=True) if len(gt_masks) else gt_masks
        pred_scores = np.ones(len(pred_masks))
    pred_area = pred_masks.sum(axis=1)  # [D]
    keep = pred_area > 0
    pred_masks, pred_scores, pred_area = pred_masks[keep], pred_scores[keep], pred_area[keep]
    gt_masks = gt_masks[gt_masks.any(axis=1)]
    gt_area = gt_masks.sum(axis=1)  # [G']

    counts = QualityCounts()
    num_pixels = pred_masks.shape[1]
    no_pixels = np.zeros(num_pixels, dtype=bool)
    void = no_pixels if void is None else void
    ignore = void | (no_pixels if crowd is None else crowd)
    # Pixels in void are removed from the union (void is disjoint from the ground truth).
    extra = overlap(pred_masks, np.stack([void, ignore]))  # [D, 2]: |P ∩ void|, |P ∩ (void ∪ crowd)|
    inter = overlap(pred_masks, gt_masks)  # [D, G']
    union = pred_area[:, None] + gt_area[None, :] - inter - extra[:, :1]  # [D, G']
    iou = np.where(inter > 0, inter / np.maximum(union, 1), 0.0)  # [D, G']

    gt_matched = np.zeros(len(gt_masks), dtype=bool)  # [G']
    for d in np.argsort(-pred_scores, kind="stable"):
        candidates = np.where(gt_matched, 0.0, iou[d])
        g = int(np.argmax(candidates)) if len(candidates) else -1
        if g >= 0 and candidates[g] > MATCH_IOU:
            gt_matched[g] = True
            counts.tp += 1
            counts.iou_sum += float(candidates[g])
        elif extra[d, 1] / pred_area[d] <= IGNORE_FRACTION:
            counts.fp += 1
    counts.fn = int((~gt_matched).sum())
    if isthing:
        matched_rows[rows[gt_matched]] = True
    elif len(gt_matched) and gt_matched[0]:
        matched_rows[rows] = True
    return counts, matched_rows


def image_matches(
    seg: ImageSegments, isthing: Mapping[int, bool], class_spaces: Mapping[int, Sequence[str]]
) -> tuple[dict[int, QualityCounts], np.ndarray]:
    """Per-class counts for one image (every class present on either side gets an entry), and
    which ground-truth segments were matched: bool [G] over `seg`'s rows (crowd never is)."""
    out: dict[int, QualityCounts] = {}
    matched = np.zeros(len(seg.gt_classes), dtype=bool)  # [G]
    for c in np.union1d(seg.gt_classes, seg.pred_classes).tolist():
        window = seg.class_window(c)
        gt_rows = seg.gt_classes == c
        crowd_rows = gt_rows & seg.gt_crowd
        crowd = seg.gt_crop(crowd_rows, window).any(axis=0) if crowd_rows.any() else None
        pred_rows = seg.pred_classes == c
        truth = gt_rows & ~seg.gt_crowd
        out[c], class_matched = match_class(
            seg.pred_crop(pred_rows, window),
            seg.pred_scores[pred_rows],
            seg.gt_crop(truth, window),
            seg.class_void(c, class_spaces.get(c, ()), window),
            crowd,
            isthing[c],
        )
        matched[np.flatnonzero(truth)] = class_matched
    return out, matched


def image_quality_counts(
    seg: ImageSegments, isthing: Mapping[int, bool], class_spaces: Mapping[int, Sequence[str]]
) -> dict[int, QualityCounts]:
    """Per-class counts for one image; every class present on either side gets an entry."""
    return image_matches(seg, isthing, class_spaces)[0]


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(
    counts: Mapping[Hashable, QualityCounts], names: Mapping[Hashable, str], isthing: Mapping[Hashable, bool]
) -> PIQResult:
    """Per-class quality and the means over classes with TP+FP+FN > 0."""
    per_class: dict[str, ClassPIQ] = {}
    for key, c in counts.items():
        denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
        if denominator == 0:
            continue
        sq = c.iou_sum / c.tp if c.tp else 0.0
        rq = c.tp / denominator
        per_class[names[key]] = ClassPIQ(sq * rq, sq, rq, c.tp, c.fp, c.fn, bool(isthing[key]))
    values = list(per_class.values())
    return PIQResult(
        piq=_mean([v.piq for v in values]),
        piq_things=_mean([v.piq for v in values if v.isthing]),
        piq_stuff=_mean([v.piq for v in values if not v.isthing]),
        sq=_mean([v.sq for v in values]),
        rq=_mean([v.rq for v in values]),
        per_class=per_class,
    )


def piq(gt: GroundTruth, predictions: Sequence[Prediction]) -> PIQResult:
    """PIQ of validated predictions (coco.load_predictions) against the ground truth."""
    isthing = {i: c.isthing for i, c in gt.categories.items()}
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    totals = {i: QualityCounts() for i in gt.categories}
    for seg in iter_image_segments(gt, predictions):
        for c, counts in image_quality_counts(seg, isthing, spaces).items():
            totals[c] += counts
    return summarize(totals, class_names(gt), isthing)


def piq_of_masks(
    proposal: Sequence[tuple[np.ndarray, Hashable, bool, float]],
    accepted: Sequence[tuple[np.ndarray, Hashable, bool, float]],
    void: np.ndarray | None = None,
) -> PIQResult:
    """PIQ of one image: a proposal against the accepted annotation (what the app shows).

    Both are lists of (bool mask [H, W], class key, isthing, score); the accepted side's
    score is unused. `void` [H, W] bool marks pixels whose truth is unknown. Class keys may
    be any hashable (names, ids); a class's isthing comes from the accepted side when present.
    """
    keys = list(dict.fromkeys([k for _, k, _, _ in accepted] + [k for _, k, _, _ in proposal]))
    index = {k: i for i, k in enumerate(keys)}
    isthing: dict[int, bool] = {}
    for _, k, thing, _ in (*proposal, *accepted):  # accepted last, so it wins
        isthing[index[k]] = bool(thing)
    seg = from_masks(
        [(m, index[k], False) for m, k, _, _ in accepted],
        [(m, index[k], float(s)) for m, k, _, s in proposal],
        void,
        DEFAULT_SPACE,
    )
    spaces = {i: (DEFAULT_SPACE,) for i in index.values()}
    counts = image_quality_counts(seg, isthing, spaces)
    return summarize(counts, {i: str(k) for k, i in index.items()}, isthing)
