"""Score calibration: are proposals with score s right a share s of the time? (this project's measure)

A proposal is right when PIQ's matching (metrics/piq.py) makes it a true positive: a ground truth of
its class at IoU > 0.5, each ground truth matched once, greedy by score. Proposals that PIQ ignores
(mostly void or crowd) are left out. The expected calibration error (ECE) is the usual binned one
(Guo et al., 2017): with equal-width score bins, Σ_b (n_b / n) · |share right in b − mean score in b|.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from formats.coco import GroundTruth, Prediction
from resi_core.metrics.piq import IGNORED, TRUE_POSITIVE, image_matches
from resi_core.metrics.segments import iter_image_segments

ECE_BINS = 10


def expected_calibration_error(scores: np.ndarray, right: np.ndarray, bins: int = ECE_BINS) -> float | None:
    """ECE of scores [N] in [0, 1] against right [N] bool, over `bins` equal-width bins; None if N = 0."""
    scores, right = np.asarray(scores, dtype=np.float64), np.asarray(right, dtype=bool)
    if scores.shape != right.shape or scores.ndim != 1:
        raise ValueError(f"scores and right must be two [N] arrays, got {scores.shape} and {right.shape}")
    if not len(scores):
        return None
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)  # [N] bin of each score; 1.0 is the last
    total = 0.0
    for b in np.unique(which):
        members = which == b
        total += members.sum() * abs(right[members].mean() - scores[members].mean())
    return float(total / len(scores))


def scored_outcomes(gt: GroundTruth, predictions: Sequence[Prediction]) -> tuple[np.ndarray, np.ndarray]:
    """(scores [N], right [N] bool) of every prediction PIQ does not ignore."""
    isthing = {i: c.isthing for i, c in gt.categories.items()}
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    scores, right = [], []
    for seg in iter_image_segments(gt, predictions):
        outcomes = image_matches(seg, isthing, spaces)[2]  # [D]
        counted = outcomes != IGNORED
        scores.append(seg.pred_scores[counted])
        right.append(outcomes[counted] == TRUE_POSITIVE)
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool)
    return np.concatenate(scores), np.concatenate(right)
