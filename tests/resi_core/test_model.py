"""RESIModel: shapes at every stage, query sets, classifier, one backward step, new label spaces."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import RESIConfig, RESICriterion, Target, build_model
from resi_core.model.config import merged_m2f, resi_linear_ablation, text_m2f

TINY = RESIConfig(
    backbone_stem=16,
    backbone_channels=(16, 16, 32, 32),
    hidden_size=32,
    feature_size=32,
    mask_feature_size=32,
    encoder_layers=1,
    decoder_layers=2,
    num_heads=2,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    num_queries=5,
    text_encoder="table",
    text_dim=4,
    train_num_points=64,
    max_size=64,
)
STREET = LabelSpace("street", (ClassDef("person"), ClassDef("car"), ClassDef("road", isthing=False)))
PORTRAIT = LabelSpace("portrait", (ClassDef("face"), ClassDef("person")))
VECTORS = {
    "person": [1, 0, 0, 0],
    "pedestrian": [0.9, 0.1, 0, 0],
    "car": [0, 1, 0, 0],
    "vehicle": [0.1, 0.9, 0, 0],
    "road": [0, 0, 1, 0],
    "face": [0, 0, 0, 1],
    "hair": [0, 0, 0.3, 0.9],
}


class TableEncoder:
    id = "table"
    dim = 4

    def encode(self, names):
        return F.normalize(torch.tensor([VECTORS[n] for n in names], dtype=torch.float32), dim=-1)


def tiny_model(config: RESIConfig = TINY, spaces=(STREET, PORTRAIT)):
    torch.manual_seed(0)
    return build_model(config, list(spaces), TableEncoder())


def test_shapes_at_every_stage():
    model = tiny_model().eval()
    pixels = torch.randn(2, 3, 64, 96)
    features = model.encode(pixels)
    assert features.mask_features.shape == (2, 32, 16, 24)  # 1/4 scale
    assert [tuple(f.shape) for f in features.multi_scale_features] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    out = model.decode(features, ["street", "portrait"])
    assert out.hidden_states.shape == (3, 2, 5, 32)  # [L+1, k, Q, D]: 2 layers + the step before them
    assert out.masks_queries_logits.shape == (3, 2, 5, 16, 24)
    logits = model.class_logits(out.hidden_states, model.class_embeddings("street"))
    assert logits.shape == (3, 2, 5, 4)  # 3 classes + no-object
    assert model.space_logits(out.hidden_states[-1, 1], "portrait").shape == (5, 3)
    assert model.class_embeddings("portrait").shape == (2, 4)


@torch.no_grad()
def test_query_sets_start_identical_by_design():
    # docs/MODEL.md: every trained label space starts from the same content queries; only its own
    # images' gradients move it apart.
    model = tiny_model()
    assert torch.equal(model.query_set("street"), model.query_set("portrait"))
    assert model.query_set("street") is not model.query_set("portrait")  # separate parameters


@torch.no_grad()
def test_stacked_query_sets_equal_separate_passes():
    model = tiny_model().eval()
    # Make the two sets differ on purpose (they start identical), by far more than float noise.
    generator = torch.Generator().manual_seed(1)
    portrait = model.query_set("portrait")
    portrait.add_(torch.randn(portrait.shape, generator=generator))
    features = model.encode(torch.randn(1, 3, 64, 64))
    both = model.decode(features, ["street", "portrait"])
    alone = model.decode(features, ["portrait"])
    # Stacked and separate passes run the same arithmetic in a different batch layout; float32 kernels
    # may sum in another order, so equal means within 1e-5, far below the difference tested next.
    assert torch.allclose(both.masks_queries_logits[:, 1], alone.masks_queries_logits[:, 0], atol=1e-5)
    assert torch.allclose(both.hidden_states[:, 1], alone.hidden_states[:, 0], atol=1e-5)
    # Different query sets give different outputs: a gap of order one, not rounding.
    assert (both.hidden_states[-1, 0] - both.hidden_states[-1, 1]).abs().max() > 0.1
    with pytest.raises(KeyError, match="Unknown label space"):
        model.decode(features, ["nowhere"])
    with pytest.raises(ValueError, match="batch"):
        model.decode(model.encode(torch.randn(2, 3, 64, 64)), ["street", "street", "street"])


@torch.no_grad()
def test_text_classifier_follows_the_formula_and_clamps_temperature():
    model = tiny_model().eval()
    hidden = torch.randn(5, 32)
    classes = model.class_embeddings("street")
    logits = model.class_logits(hidden, classes)
    query = F.normalize(model.class_proj(hidden), dim=-1)
    expected_person = (1 / 0.07) * query @ F.normalize(torch.tensor([1.0, 0, 0, 0]), dim=0)
    assert torch.allclose(logits[:, 0], expected_person, atol=1e-4)
    model.logit_scale.fill_(10.0)  # exp(10) >> 100
    assert model.class_logits(hidden, classes).abs().max() <= 100.0 + 1e-4
    adhoc = TableEncoder().encode(["vehicle", "hair", "road", "car", "face"])
    assert model.class_logits(hidden, adhoc).shape == (5, 6)


@torch.no_grad()
def test_shared_queries_and_linear_union_head():
    shared = tiny_model(text_m2f(TINY)).eval()
    features = shared.encode(torch.randn(1, 3, 64, 64))
    a, b = shared.decode(features, ["street", "anything"]).hidden_states.unbind(1)
    assert torch.allclose(a, b, atol=1e-5) and len(shared.query_sets) == 1

    merged = tiny_model(merged_m2f(TINY)).eval()
    assert merged.union_names == ["person", "car", "road", "face"]  # "person" of both spaces is one column
    assert merged.space_columns == {"street": [0, 1, 2], "portrait": [3, 0]}
    hidden = merged.decode(merged.encode(torch.randn(1, 3, 64, 64)), ["x"]).hidden_states
    union = merged.class_logits(hidden, None)
    assert union.shape == (3, 1, 5, 5)
    assert torch.equal(merged.space_logits(hidden, "portrait"), union[..., [3, 0, 4]])

    ablation = tiny_model(resi_linear_ablation(TINY))
    assert len(ablation.query_sets) == 2 and not hasattr(ablation, "class_proj")


def test_one_backward_step_reaches_only_the_used_query_set():
    model = tiny_model().train()
    criterion = RESICriterion(model)
    masks = torch.zeros(2, 64, 64)
    masks[0, :32] = 1
    masks[1, 32:, 10:40] = 1
    targets = [Target("street", masks, torch.tensor([0, 2])), Target("street", masks[:0], torch.zeros(0).long())]
    output = model(torch.randn(2, 3, 64, 64), ["street", "street"])
    loss = criterion(model, output, targets)
    assert loss.total.ndim == 0 and torch.isfinite(loss.total)
    loss.total.backward()
    street, portrait = model.query_sets
    assert street.grad is not None and street.grad.abs().sum() > 0
    assert portrait.grad is None
    assert model.class_proj.weight.grad.abs().sum() > 0
    backbone = next(model.mask2former.pixel_level_module.encoder.parameters())
    assert backbone.grad.abs().sum() > 0


def test_group_norm_backbone_has_no_batchnorm():
    model = tiny_model()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_preprocess_pads_to_multiple_of_32():
    model = tiny_model()
    (pixels,) = model.preprocess(np.zeros((100, 50, 3), dtype=np.uint8))
    assert pixels.shape == (1, 3, 64, 32)  # long side 64, 32 -> padded to 32
    with pytest.raises(ValueError, match="RGB uint8"):
        model.preprocess(np.zeros((10, 10), dtype=np.uint8))


def test_add_label_space_mixes_the_similar_space_and_freezes_the_rest():
    model = tiny_model()
    drive = LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle")))
    before = [q.detach().clone() for q in model.query_sets]
    weights = model.add_label_space(drive, TableEncoder())
    assert list(weights) == ["street", "portrait"]
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["street"] > weights["portrait"]  # pedestrian/vehicle are street-like
    expected = weights["street"] * before[0] + weights["portrait"] * before[1]
    assert torch.allclose(model.query_set("drive"), expected, atol=1e-6)
    assert model.class_embeddings("drive").shape == (2, 4)
    assert model.decode(model.encode(torch.randn(1, 3, 64, 64)), ["drive"]).hidden_states.shape == (3, 1, 5, 32)

    trainable = model.freeze_all_but("drive")
    assert [p for p in model.parameters() if p.requires_grad] == trainable
    assert trainable[0] is model.query_set("drive")
    with pytest.raises(ValueError, match="already exists"):
        model.add_label_space(drive, TableEncoder())


def test_config_validation_and_json_round_trip():
    assert RESIConfig.from_json(TINY.to_json()) == TINY
    with pytest.raises(ValueError, match="multiple of 32"):
        dataclasses.replace(TINY, feature_size=48)
    with pytest.raises(ValueError, match="classifier"):
        dataclasses.replace(TINY, classifier="mlp")
    with pytest.raises(ValueError, match="does not match"):
        build_model(dataclasses.replace(TINY, text_encoder="minilm", text_dim=384), [STREET], TableEncoder())


def test_loss_under_bfloat16_autocast():
    """Training uses bf16 autocast on CUDA; the matcher must still get float32 costs (CPU autocast here)."""
    model = tiny_model().train()
    masks = torch.zeros(1, 64, 64)
    masks[0, 10:30] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(1, 3, 64, 64), ["portrait"])
        loss = RESICriterion(model)(model, output, [Target("portrait", masks, torch.tensor([1]))])
    assert loss.total.dtype == torch.float32 and torch.isfinite(loss.total)
