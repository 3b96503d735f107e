"""train/holdout.py: the train/holdout split depends on each image's hash alone (deterministic, stable as
images are added), and evaluate_holdout scores predictions against the held-out ground truth."""

from __future__ import annotations

import random

import numpy as np
import pytest

from formats.rle import encode_mask
from resi_core.data import DatasetError
from resi_core.labels import ClassDef, LabelSpace
from resi_core.predictor import Prediction
from resi_core.segment import Segment, Source
from train import holdout
from train.holdout import HeldOutImage, TruthMask, evaluate_holdout, split_holdout, split_key


def key(fraction: float, tail: str = "") -> str:
    """A SHA-256-like hex digest whose split key is `fraction` (its first 64 bits)."""
    return f"{int(fraction * 2**64):016x}" + (tail or "ab" * 24)


def test_the_key_is_the_first_64_bits_as_a_fraction():
    assert split_key("0" * 64) == 0.0 and split_key("8" + "0" * 63) == 0.5
    assert split_key(key(0.25)) == pytest.approx(0.25)


def test_split_is_deterministic_order_free_and_stable_as_images_are_added():
    rng = random.Random(0)
    keys = [f"{rng.getrandbits(256):064x}" for _ in range(200)]
    held = split_holdout(keys, 0.2)
    assert held == split_holdout(list(keys), 0.2)  # same input, same split
    shuffled = keys[:]
    rng.shuffle(shuffled)
    assert {k for k, h in zip(shuffled, split_holdout(shuffled, 0.2), strict=True) if h} == \
        {k for k, h in zip(keys, held, strict=True) if h}  # the order of the images does not matter
    assert held == [split_key(k) < 0.2 for k in keys]  # enough keys below the fraction: exactly those
    assert 20 < sum(held) < 60  # about a fifth of 200 uniform keys (binomial sd ~5.7)
    more = keys + [f"{rng.getrandbits(256):064x}" for _ in range(100)]
    assert split_holdout(more, 0.2)[:200] == held  # adding images never moves an image to the other side


def test_small_sets_hold_out_the_smallest_keys_and_keep_one_to_train():
    keys = [key(0.9), key(0.5), key(0.7)]  # none below 0.2
    assert split_holdout(keys, 0.2) == [False, True, False]
    assert split_holdout(keys, 0.2, min_holdout=2) == [False, True, True]
    assert split_holdout(keys, 0.0) == [False, False, False]  # no holdout at all
    with pytest.raises(DatasetError, match="too few to hold 1 out"):
        split_holdout([key(0.5)], 0.2)
    with pytest.raises(ValueError, match="holdout fraction"):
        split_holdout(keys, 1.0)


# ----- evaluate_holdout with a predictor whose answers are given ----------------------------------

SPACES = {"plants": LabelSpace("plants", (ClassDef("grass", isthing=False), ClassDef("tree"))),
          "drive": LabelSpace("drive", (ClassDef("vegetation", isthing=False),))}


class Model:
    label_spaces = SPACES


def box(top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((32, 32), dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def segment(name: str, space: str, mask: np.ndarray, score: float = 0.9, isthing: bool = True) -> Segment:
    return Segment(f"{name}-{mask.sum()}-{score}", mask, name, (space,), score, isthing,
                   (Source(space, name, 0, space),))


def test_evaluate_holdout_scores_the_predictions_against_the_truth(monkeypatch):
    grass, tree, vegetation = box(16, 0, 16), box(0, 0, 8), box(0, 0, 32)
    answers = {
        1: [segment("grass", "plants", grass, isthing=False), segment("tree", "plants", tree),
            segment("vegetation", "drive", vegetation, isthing=False)],  # every mask right
        2: [segment("tree", "plants", box(20, 20, 8))],  # a tree where there is none; the truth's tree missed
    }

    class Predictor:
        def __init__(self, model, encoder, device="cpu", cache_size=1):
            self.calls = 0

        def predict(self, image, request, with_semantic=False):
            assert request.spaces == ("plants", "drive") and with_semantic
            found = answers[int(image[0, 0, 0])]
            return Prediction(found, [s for s in found if s.isthing], {}, None, "", False, semantic=found)

    monkeypatch.setattr(holdout, "Predictor", Predictor)
    images = [
        HeldOutImage(32, 32, lambda n=n: np.full((32, 32, 3), n, np.uint8),
                     (TruthMask("plants", "grass", encode_mask(grass)), TruthMask("plants", "tree", encode_mask(tree)),
                      TruthMask("drive", "vegetation", encode_mask(vegetation))))
        for n in (1, 2)
    ]
    result = evaluate_holdout(Model(), images, ("plants", "drive"))
    # grass and vegetation: IoU 1 on image 1, missed on image 2 -> 1 / (1 + 0.5) each;
    # tree: 1 TP (IoU 1), 1 FP, 1 FN -> 1 / (1 + 0.5 + 0.5)
    assert result["per_class_piq"] == {"grass": pytest.approx(66.67), "tree": 50.0, "vegetation": pytest.approx(66.67)}
    assert result["piq"] == pytest.approx((66.67 * 2 + 50) / 3, abs=0.01)
    assert result["per_space_piq"] == {"plants": pytest.approx((66.67 + 50) / 2, abs=0.01),
                                       "drive": pytest.approx(66.67)}
    # both plants masks lie inside vegetation (a drive mask): 4 pairs over two images, 2 found (image 1)
    assert (result["overlap_pairs"], result["overlap_recall"]) == (4, 50.0)
    assert result["images"] == 2 and result["ap"] is not None and result["miou"] is not None
