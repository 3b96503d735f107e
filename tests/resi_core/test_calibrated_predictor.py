"""Score temperature and familiarity in the predictor and in checkpoints (docs/MODEL.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resi_core.model import (
    CheckpointError,
    RESIConfig,
    ScoreMap,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from resi_core.predictor import UNFAMILIAR_NOTICE, Predictor, SpacesRequest
from tests.resi_core.test_predictor import SPACES, FakeEncoder, FakeModel, HashEncoder, red_left_image


def test_temperature_changes_scores_never_segments():
    model = FakeModel()
    image, request = red_left_image(64, 64), SpacesRequest(("street", "portrait"))
    plain = Predictor(model, FakeEncoder()).predict(image, request)
    model.score_temperature = 10.0
    cooled = Predictor(model, FakeEncoder()).predict(image, request)
    assert [s.class_name for s in plain.segments] == [s.class_name for s in cooled.segments] == ["person", "face"]
    for a, b in zip(plain.segments, cooled.segments, strict=True):
        assert np.array_equal(a.mask, b.mask) and a.id == b.id
    # The fake's query 0 has logit 20 for class 0 and 0 for the K others and ∅: p = e^20 / (e^20 + K) at T = 1,
    # e^2 / (e^2 + K) at T = 10 (street K = 2 -> 0.787; portrait K = 2 as well).
    assert plain.segments[0].score == pytest.approx(math.exp(20) / (math.exp(20) + 2))
    assert cooled.segments[0].score == pytest.approx(math.exp(2) / (math.exp(2) + 2))


def tiny_model():
    torch.manual_seed(0)
    config = RESIConfig(text_encoder=HashEncoder.id, text_dim=HashEncoder.dim, max_size=64, num_queries=4, hidden_size=32,
                        feature_size=32, mask_feature_size=32, backbone_channels=(16, 16, 32, 32), backbone_stem=16,
                        num_heads=2, dim_feedforward=32, encoder_feedforward_dim=32, decoder_layers=1,
                        encoder_layers=1)
    return build_model(config, [SPACES["street"], SPACES["portrait"]], HashEncoder()).eval()


def test_familiarity_flags_far_images_and_says_so():
    model = tiny_model()
    dim = model.pooled_dim()
    image = red_left_image(64, 64)
    with torch.inference_mode():
        pooled = model.pooled_features(model.encode(*model.preprocess(image)))  # [1, F]
    # Two kinds: one centred on this very image (distance 0 with identity whitening), one far away.
    means = torch.stack([pooled[0], pooled[0] + 100.0])
    whitening = torch.eye(dim).expand(2, dim, dim)
    model.set_familiarity(["near", "far"], means, whitening, threshold=0.5)
    near = Predictor(model, None).predict(image, SpacesRequest(("street",)))
    assert near.familiarity_distance == pytest.approx(0.0, abs=1e-4) and not near.unfamiliar and near.notice == ""
    model.set_familiarity(["far"], means[1:], whitening[1:], threshold=0.5)  # only the far kind is familiar
    far = Predictor(model, None).predict(image, SpacesRequest(("street",)))
    assert far.familiarity_distance == pytest.approx(100.0, rel=1e-3)  # RMS of a 100 offset per feature
    assert far.unfamiliar and far.notice == UNFAMILIAR_NOTICE and "unlike anything" in far.notice
    # A model without statistics never flags.
    model.familiarity = None
    plain = Predictor(model, None).predict(image, SpacesRequest(("street",)))
    assert plain.familiarity_distance is None and not plain.unfamiliar
    with pytest.raises(ValueError, match="do not fit"):
        model.set_familiarity(["a"], torch.zeros(1, dim + 1), torch.zeros(1, dim + 1, dim + 1), 1.0)
    with pytest.raises(ValueError, match="positive"):
        model.set_familiarity(["a"], torch.zeros(1, dim), torch.zeros(1, dim, dim), 0.0)


def test_checkpoint_keeps_temperature_and_familiarity(tmp_path):
    model = tiny_model()
    dim = model.pooled_dim()
    torch.manual_seed(1)
    means, whitening = torch.randn(2, dim), torch.randn(2, dim, dim)
    model.set_familiarity(["street", "portrait"], means, whitening, 2.5)
    model.set_score_temperature(3.0)
    save_checkpoint(tmp_path / "c", model)
    back = load_checkpoint(tmp_path / "c")
    assert back.score_temperature == 3.0 and back.familiarity.threshold == 2.5
    assert back.familiarity.kinds == ["street", "portrait"]
    assert torch.equal(back.familiarity.means, means) and torch.equal(back.familiarity.whitening, whitening)
    # A checkpoint from before calibration existed (no such keys) loads with T = 1 and no familiarity.
    import json

    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("score_temperature", "familiarity_threshold", "familiarity_kinds"):
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))
    old = load_checkpoint(tmp_path / "c")
    assert old.score_temperature == 1.0 and old.familiarity is None
    meta["score_temperature"] = "hot"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="score_temperature"):
        load_checkpoint(tmp_path / "c")


def test_score_map_changes_scores_never_segments():
    model = FakeModel()
    image, request = red_left_image(64, 64), SpacesRequest(("street", "portrait"))
    plain = Predictor(model, FakeEncoder()).predict(image, request)
    # Every score of the fake is e^20 / (e^20 + 2) ≈ 1; the map sends scores from 0.9 up to 0.7.
    model.score_map = ScoreMap((0.0, 0.9), (0.0, 0.7))
    mapped = Predictor(model, FakeEncoder()).predict(image, request)
    assert [s.class_name for s in mapped.segments] == [s.class_name for s in plain.segments]
    for a, b in zip(plain.segments, mapped.segments, strict=True):
        assert np.array_equal(a.mask, b.mask) and b.score == pytest.approx(0.7)


@pytest.mark.parametrize(
    "scores, calibrated, message",
    [
        ((0.5,), (0.5,), "two or more knots"),
        ((0.1, 0.2), (0.3,), "two or more knots"),
        ((0.2, 0.1), (0.3, 0.4), "must increase"),
        ((0.1, 0.2), (0.4, 0.3), "must not decrease"),
        ((0.1, 1.2), (0.3, 0.4), "from 0 to 1"),
        ((0.1, float("nan")), (0.3, 0.4), "from 0 to 1"),
    ],
)
def test_score_map_refuses_bad_knots(scores, calibrated, message):
    with pytest.raises(ValueError, match=message):
        ScoreMap(scores, calibrated)


def test_score_map_interpolates_and_is_flat_beyond_its_knots():
    curve = ScoreMap((0.2, 0.6, 0.8), (0.1, 0.5, 0.9))
    assert curve(0.4) == pytest.approx(0.3) and curve(0.7) == pytest.approx(0.7)
    assert curve(0.0) == 0.1 and curve(1.0) == 0.9


def test_checkpoint_keeps_the_score_map(tmp_path):
    import json

    model = tiny_model()
    model.set_score_map(ScoreMap((0.3, 0.5, 0.9), (0.0, 0.4, 1.0)))
    save_checkpoint(tmp_path / "c", model)
    back = load_checkpoint(tmp_path / "c")
    assert back.score_map == model.score_map
    meta_path = tmp_path / "c" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["score_map"] = {"scores": [0.5, 0.3], "calibrated": [0.1, 0.2]}  # edited by hand, not increasing
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="must increase"):
        load_checkpoint(tmp_path / "c")
    meta.pop("score_map")  # saved before the map existed: temperature only
    meta_path.write_text(json.dumps(meta))
    assert load_checkpoint(tmp_path / "c").score_map is None
