"""Expected calibration error and PIQ's per-proposal outcomes, on cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from resi_core.metrics.calibration import expected_calibration_error, scored_outcomes
from tests.resi_core.test_metrics import car_vehicle, person_face


def test_ece_by_hand():
    # Bin [0.9, 1.0]: scores .95, .95, right 1 of 2 -> |0.5 - 0.95| = 0.45, weight 2/4.
    # Bin [0.6, 0.7): scores .6, .6, right 1 of 2 -> |0.5 - 0.6| = 0.1, weight 2/4.
    ece = expected_calibration_error(np.array([0.95, 0.95, 0.6, 0.6]), np.array([True, False, True, False]))
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.1)
    # Perfectly calibrated bins give 0; a score of exactly 1.0 falls in the last bin.
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([True, True])) == pytest.approx(0.0)
    assert expected_calibration_error(np.zeros(0), np.zeros(0, bool)) is None
    with pytest.raises(ValueError):
        expected_calibration_error(np.zeros(2), np.zeros(3, bool))


def test_outcomes_follow_piq_matching():
    gt, preds = person_face()  # person .9 (TP), face .8 (TP), face .7 (a duplicate: FP)
    scores, right = scored_outcomes(gt, preds)
    assert sorted(zip(scores.tolist(), right.tolist(), strict=True)) == [(0.7, False), (0.8, True), (0.9, True)]
    gt, preds = car_vehicle()
    scores, right = scored_outcomes(gt, preds)
    # The .6 vehicle lies mostly in drive's void: PIQ ignores it, so it is left out (6 of 7 counted).
    # car .9 TP, vehicle .9 TP, .8 TP, .7 FP; sky .5 and .4 merge into one TP: both count as right.
    assert len(scores) == 6 and 0.6 not in scores.tolist()
    assert dict(zip(scores.tolist(), right.tolist(), strict=False))[0.7] is False
    assert right.sum() == 5
