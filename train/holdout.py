"""Fine-tuning's held-out images: a deterministic train/holdout split and the metrics on the holdout.

The split depends on each image alone: an image is held out when the key of its content hash
(the first 64 bits of its SHA-256, as a fraction of 2^64) is below the holdout fraction. So an
image keeps its side when more images are accepted later, and a periodic fine-tune never trains on
an image that an earlier version was judged on. When too few keys fall below the fraction (small
projects), the images with the smallest keys are held out until `min_holdout` are.

The metrics are the project's own (docs/METRICS.md): PIQ, PQ and overlap recall of the ESF-OMI
segments, mIoU of the semantic maps, mask AP of the instance list, as `python -m train bench` scores
its RESI row, with the Predictor the app uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from formats.coco import Prediction as CocoPrediction
from formats.coco import load_ground_truth
from resi_core.data import DatasetError, TrainSample
from resi_core.labels import LabelError, LabelSpace, mix
from resi_core.metrics import evaluate, mask_ap, miou
from resi_core.model import RESIModel
from resi_core.predictor import Predictor, SpacesRequest

HOLDOUT_FRACTION = 0.2
MIN_HOLDOUT = 1


def split_key(sha256_hex: str) -> float:
    """An image's place in [0, 1) for the split: the first 64 bits of its SHA-256."""
    return int(sha256_hex[:16], 16) / 2**64


def split_holdout(keys: Sequence[str], fraction: float, min_holdout: int = MIN_HOLDOUT) -> list[bool]:
    """Which images are held out (True), from their SHA-256 hex digests; at least one trains.

    `fraction` 0 holds nothing out. Otherwise images whose key is below `fraction` are held out,
    topped up with the smallest keys to `min_holdout`. Raises DatasetError when no image would be
    left to train on.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"The holdout fraction must be in [0, 1), got {fraction}.")
    values = [split_key(k) for k in keys]
    held = [fraction > 0 and v < fraction for v in values]
    if fraction > 0:
        for i in sorted(range(len(values)), key=values.__getitem__):
            if sum(held) >= min_holdout:
                break
            held[i] = True
    if len(keys) and all(held):
        raise DatasetError(
            f"{len(keys)} image(s) are too few to hold {min_holdout} out and train on the rest: accept more "
            "images, or pass --holdout 0 (then nothing measures the result, and it is not made active)."
        )
    return held


class Subset:
    """Some images of a dataset (CocoDataset or AcceptedDataset), read like the dataset itself."""

    def __init__(self, dataset: Any, indices: Sequence[int]):
        self.dataset = dataset
        self.indices = list(indices)
        self.name = dataset.name
        self.label_space: LabelSpace = dataset.label_space

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, index: int) -> np.ndarray:
        return self.dataset.image(self.indices[index])

    def __getitem__(self, index: int) -> TrainSample:
        return self.dataset[self.indices[index]]


# ----- evaluation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthMask:
    """One ground-truth mask of a held-out image: its label space and class, as COCO RLE."""

    space: str
    class_name: str
    rle: dict[str, Any]


@dataclass(frozen=True)
class HeldOutImage:
    height: int
    width: int
    load: Callable[[], np.ndarray]  # -> RGB uint8 HWC
    truth: tuple[TruthMask, ...]


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def evaluate_holdout(model: RESIModel, images: Sequence[HeldOutImage], spaces: Sequence[str],
                     synonyms: Sequence[tuple[str, str]] = (), device: str | torch.device = "cpu",
                     on_image: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The model's metrics on `images` for a request of `spaces` (all trained by `model`), in points.

    Returns {"images", "piq", "pq", "miou", "ap", "overlap_recall", "overlap_pairs", "per_space_piq",
    "per_class_piq"}: PIQ, PQ (mean of spaces) and overlap recall of the ESF-OMI segments, mIoU of the
    semantic maps, mask AP of the instance list (None without thing classes); overlap recall is None
    when the ground truth has no overlapping pair of masks of different label spaces. Classes without ground truth or
    predictions on these images take no part, as in `evaluate`. `on_image(done, total)` after each.
    """
    known = {c.name for s in spaces for c in model.label_spaces[s].classes}
    synonyms = tuple((a, b) for a, b in synonyms if a in known and b in known)
    try:
        mixed = mix([model.label_spaces[s] for s in spaces], synonyms)
    except (KeyError, LabelError) as err:
        raise ValueError(f"Cannot evaluate label spaces {list(spaces)}: {err}") from None
    categories = [{"id": i + 1, "name": c.name, "isthing": int(c.isthing), "label_spaces": list(c.label_spaces)}
                  for i, c in enumerate(mixed.classes)]
    category_of = {c["name"]: c["id"] for c in categories}
    gt_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        gt_images.append({"id": image_id, "height": image.height, "width": image.width})
        for truth in image.truth:
            category = mixed.class_of(truth.space, truth.class_name) + 1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                "segmentation": truth.rle, "iscrowd": 0})
    gt = load_ground_truth({"images": gt_images, "annotations": annotations, "categories": categories})

    predictor = Predictor(model, None, device=device, cache_size=1)
    request = SpacesRequest(tuple(spaces), synonyms)
    segments: list[CocoPrediction] = []
    instances: list[CocoPrediction] = []
    semantic: list[CocoPrediction] = []
    for image_id, image in enumerate(images, start=1):
        pred = predictor.predict(image.load(), request, with_semantic=True)
        for out, found in ((segments, pred.segments), (instances, pred.instances), (semantic, pred.semantic)):
            out += [CocoPrediction(image_id, category_of[s.class_name], s.to_rle(), s.score) for s in found]
        if on_image is not None:
            on_image(image_id, len(images))
    result = evaluate(gt, segments, with_ap=False)
    ap = mask_ap(gt, instances)
    per_class = {name: c.piq for name, c in result.piq.per_class.items()}
    per_space = {}
    for space in spaces:
        values = [per_class[c.name] for c in mixed.classes if space in c.label_spaces and c.name in per_class]
        per_space[space] = _percent(float(np.mean(values))) if values else None
    return {
        "images": len(images),
        "piq": _percent(result.piq.piq),
        "pq": _percent(result.pq.pq_mean),
        "miou": _percent(miou(gt, semantic).miou),
        "ap": None if ap is None else _percent(ap.ap),
        "overlap_recall": _percent(result.overlap.recall),
        "overlap_pairs": result.overlap.pairs,
        "per_space_piq": per_space,
        "per_class_piq": {name: _percent(value) for name, value in per_class.items()},
    }
