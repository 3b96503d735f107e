"""`fit_score_map` (train/calibrate.py): centred isotonic regression recovers a known calibration curve."""

from __future__ import annotations

import numpy as np

from resi_core.metrics.calibration import expected_calibration_error
from train.calibrate import fit_score_map


def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores uniform on [0, 1], right with probability score² (overconfident: a proposal scored 0.5 is right
    a quarter of the time), so the true calibration curve is s -> s²."""
    scores = rng.uniform(0.0, 1.0, n)
    return scores, rng.uniform(0.0, 1.0, n) < scores**2


def test_the_map_recovers_a_known_curve_on_fresh_samples():
    rng = np.random.default_rng(0)
    fit_scores, fit_right = sample(rng, 4000)
    curve = fit_score_map(fit_scores, fit_right)
    assert curve is not None
    scores, right = sample(rng, 4000)
    before = expected_calibration_error(scores, right)
    after = expected_calibration_error(np.array([curve(s) for s in scores]), right)
    oracle = expected_calibration_error(scores**2, right)  # the true curve: what sampling noise alone leaves
    # E|s − s²| over uniform s is 1/6; the map, fitted on other draws, comes within 0.02 of the true curve.
    assert abs(before - 1 / 6) < 0.02 and oracle < 0.03
    assert after < oracle + 0.02
    for s in (0.3, 0.5, 0.8):  # the map is near the true curve s²
        assert abs(curve(s) - s**2) < 0.08
    # Monotone (the scores keep their order between its outer knots).
    assert all(b > a for a, b in zip(curve.scores, curve.scores[1:], strict=False))
    assert all(b >= a for a, b in zip(curve.calibrated, curve.calibrated[1:], strict=False))
    assert 0 < curve.calibrated[0] and curve.calibrated[-1] < 1  # never certain: a score of 1 is never given


def test_no_map_when_every_proposal_is_equally_right():
    scores = np.linspace(0.1, 0.9, 50)
    assert fit_score_map(scores, np.ones(50, dtype=bool)) is None
