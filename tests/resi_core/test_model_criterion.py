"""Matcher + loss on hand-built predictions: good beats bad, per-space negatives, empty targets."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import DecoderOutput, RESIConfig, RESICriterion, Target
from resi_core.model.build import mask2former_config

A = LabelSpace("a", (ClassDef("person"), ClassDef("car")))
B = LabelSpace("b", (ClassDef("face"),))
UNION = ["person", "car", "face"]  # union columns; column 3 is no-object
CONFIG = RESIConfig(text_encoder="stub", text_dim=4, num_queries=3, train_num_points=256)
Q, H, W = 3, 16, 16


class StubModel:
    """The hidden state of a query *is* its union logit vector [person, car, face, no-object]."""

    def __init__(self, config: RESIConfig = CONFIG):
        self.config = config
        self.label_spaces = {"a": A, "b": B}
        self.union_names = UNION
        self.space_columns = {"a": [0, 1], "b": [2]}
        self.mask2former = SimpleNamespace(config=mask2former_config(config))

    def space_logits(self, hidden, space):
        return hidden[..., self.space_columns[space] + [3]]

    def union_logits(self, hidden):
        return hidden


def _masks():
    top = torch.zeros(H, W)
    top[:8] = 1
    left = torch.zeros(H, W)
    left[8:, :8] = 1
    return top, left


def _prediction(assign: list[tuple[torch.Tensor, int]], steps: int = 2) -> DecoderOutput:
    """One image; query i predicts (mask, union class) assign[i]; other queries say no-object."""
    hidden = torch.full((Q, 4), -8.0)
    hidden[:, 3] = 8.0
    masks = torch.full((Q, H, W), -8.0)
    for i, (mask, cls) in enumerate(assign):
        hidden[i] = -8.0
        hidden[i, cls] = 8.0
        masks[i] = mask * 16 - 8
    return DecoderOutput(
        hidden_states=hidden[None, None].repeat(steps, 1, 1, 1),  # [L+1, 1, Q, 4]
        masks_queries_logits=masks[None, None].repeat(steps, 1, 1, 1, 1),  # [L+1, 1, Q, H, W]
    )


def _loss(output, targets, config=CONFIG):
    torch.manual_seed(0)
    model = StubModel(config)
    return RESICriterion(model)(model, output, targets)


def test_perfect_prediction_beats_swapped_classes_and_masks():
    top, left = _masks()
    target = [Target("a", torch.stack([top, left]), torch.tensor([0, 1]))]
    perfect = _loss(_prediction([(top, 0), (left, 1)]), target)
    wrong_classes = _loss(_prediction([(top, 1), (left, 0)]), target)
    wrong_masks = _loss(_prediction([(1 - top, 0), (1 - left, 1)]), target)
    assert perfect.total < 0.2 * wrong_classes.total
    assert perfect.total < 0.2 * wrong_masks.total
    assert perfect.parts["ce"] < wrong_classes.parts["ce"]
    assert perfect.parts["dice"] < wrong_masks.parts["dice"]


def test_matching_is_order_free():
    top, left = _masks()
    target = [Target("a", torch.stack([top, left]), torch.tensor([0, 1]))]
    in_order = _loss(_prediction([(top, 0), (left, 1)]), target)
    reversed_queries = _loss(_prediction([(left, 1), (top, 0)]), target)
    # Masks are scored on randomly drawn (mostly boundary) points, so only the class term is exact.
    assert torch.allclose(in_order.parts["ce"], reversed_queries.parts["ce"], atol=1e-5)
    assert abs(in_order.total - reversed_queries.total) < 0.2 * in_order.total


def test_other_spaces_classes_are_never_negatives():
    """A space-a image is unaffected by what queries say about b's "face"; Merged-M2F is not."""
    top, left = _masks()
    target = [Target("a", torch.stack([top, left]), torch.tensor([0, 1]))]
    output = _prediction([(top, 0), (left, 1)])
    face_heavy = _prediction([(top, 0), (left, 1)])
    face_heavy.hidden_states[..., 2] = 7.0  # every query also scores "face" high
    assert torch.allclose(_loss(output, target).total, _loss(face_heavy, target).total)
    merged = dataclasses.replace(CONFIG, classifier="linear", query_mode="shared", negatives="all_spaces")
    assert _loss(face_heavy, target, merged).total > _loss(output, target, merged).total + 1.0


def test_mixed_batch_classifies_each_sample_in_its_own_space():
    top, left = _masks()
    out_a = _prediction([(top, 0), (left, 1)])
    out_b = _prediction([(left, 2)])
    batch = DecoderOutput(
        hidden_states=torch.cat([out_a.hidden_states, out_b.hidden_states], dim=1),
        masks_queries_logits=torch.cat([out_a.masks_queries_logits, out_b.masks_queries_logits], dim=1),
    )
    targets = [
        Target("a", torch.stack([top, left]), torch.tensor([0, 1])),
        Target("b", left[None], torch.tensor([0])),  # index 0 within b = "face"
    ]
    assert _loss(batch, targets).parts["ce"] < 0.01
    wrong = [targets[0], Target("b", left[None], torch.tensor([0]))]
    wrong_pred = DecoderOutput(batch.hidden_states.clone(), batch.masks_queries_logits)
    wrong_pred.hidden_states[:, 1, 0, 2] = -8.0  # b's query no longer says face
    assert _loss(wrong_pred, wrong).parts["ce"] > 0.1


def test_empty_targets_work_and_favor_no_object():
    empty = [Target("b", torch.zeros(0, H, W), torch.zeros(0, dtype=torch.long))]
    quiet = _prediction([])
    loud = _prediction([(torch.ones(H, W), 2)])
    quiet_loss, loud_loss = _loss(quiet, empty), _loss(loud, empty)
    assert torch.isfinite(quiet_loss.total) and quiet_loss.parts["mask"] == 0
    assert loud_loss.total > quiet_loss.total

    hidden = quiet.hidden_states.clone().requires_grad_(True)
    masks = quiet.masks_queries_logits.clone().requires_grad_(True)
    _loss(DecoderOutput(hidden, masks), empty).total.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()


def test_every_decoder_step_is_supervised():
    top, left = _masks()
    target = [Target("a", torch.stack([top, left]), torch.tensor([0, 1]))]
    good = _prediction([(top, 0), (left, 1)], steps=3)
    bad_early = _prediction([(top, 0), (left, 1)], steps=3)
    bad_early.hidden_states[0] = _prediction([(top, 1), (left, 0)], steps=1).hidden_states[0]
    assert _loss(bad_early, target).total > _loss(good, target).total + 1.0
