"""Training data: COCO-format datasets (docs/FORMATS.md), one label space each, mixed in batches.

A sample is an RGB uint8 HWC image with the non-crowd instance masks of its own label space.
Augmentation (random scale, crop to a square, horizontal flip) makes every sample size x size;
pixels outside the image are zero after normalization, as the Predictor pads at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from formats.coco import load_ground_truth
from formats.images import decode_image
from formats.rle import decode_rles
from resi_core.image_io import normalize
from resi_core.labels import ClassDef, LabelError, LabelSpace, normalize_name
from resi_core.model.criterion import Target


class DatasetError(ValueError):
    """A training dataset that cannot be used (missing files, no classes of its label space)."""


@dataclass
class TrainSample:
    image: np.ndarray  # [H, W, 3] uint8 RGB
    masks: np.ndarray  # [N, H, W] bool
    labels: np.ndarray  # [N] int64 class indices within `space`
    space: str


@dataclass
class Batch:
    pixel_values: torch.Tensor  # [B, 3, S, S] normalized
    targets: list[Target]

    @property
    def spaces(self) -> list[str]:
        return [t.space for t in self.targets]


def _space_from_file(name: str, data: dict, categories, used: set[int], keep_empty: bool
                     ) -> tuple[LabelSpace, list[str]]:
    """The label space `name` from `info.label_spaces`, else from the categories that list it; and the
    categories left out because no annotation uses them (unless `keep_empty`: a `_background_`
    category must not become a class to learn)."""
    for entry in (data.get("info") or {}).get("label_spaces", []) or []:
        if entry.get("name") == name:
            return LabelSpace.from_json(entry), []
    cats = [c for c in categories.values() if name in c.label_spaces]
    if not cats:  # a single-space file whose categories do not name their space
        cats = list(categories.values())
    empty = [c.name for c in cats if c.id not in used]
    if not keep_empty:
        cats = [c for c in cats if c.id in used]
    return LabelSpace(name, tuple(ClassDef(c.name, c.isthing, c.synonyms) for c in cats)), empty


class CocoDataset:
    """One COCO instances file + image folder, read as label space `name`."""

    def __init__(self, name: str, images_dir: str | Path, instances: str | Path, keep_empty: bool = False):
        self.name = name
        self.images_dir = Path(images_dir)
        if not Path(instances).is_file():
            raise DatasetError(f"Dataset {name!r}: no instances file at {instances}.")
        gt = load_ground_truth(instances)
        self.label_space, self.empty_categories = _space_from_file(
            name, dict(gt.raw), gt.categories, {a.category_id for a in gt.annotations}, keep_empty)
        self.category_to_class: dict[int, int] = {}
        for cat in gt.categories.values():
            for candidate in (cat.name, *cat.synonyms):
                try:
                    self.category_to_class[cat.id] = self.label_space.index(candidate)
                    break
                except LabelError:
                    continue
        self.images = sorted(gt.images.values(), key=lambda im: im.id)
        by_image = gt.annotations_by_image()
        self.annotations = [
            [a for a in by_image[im.id] if not a.iscrowd and a.category_id in self.category_to_class]
            for im in self.images
        ]
        if not self.images:
            raise DatasetError(f"Dataset {name!r} ({instances}) has no images.")

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        """The RGB uint8 image alone (no masks decoded), checked against its recorded size."""
        info = self.images[index]
        image = decode_image(self.images_dir / info.file_name)
        if image.shape[:2] != (info.height, info.width):
            raise DatasetError(f"Dataset {self.name!r}: {info.file_name} is not {info.height}x{info.width}.")
        return image

    def __getitem__(self, index: int) -> TrainSample:
        info, anns = self.images[index], self.annotations[index]
        image = self.image(index)
        flat = decode_rles([a.rle for a in anns], info.height, info.width)  # [N, H*W]
        masks = flat.reshape(len(anns), info.height, info.width)  # [N, H, W]
        labels = np.array([self.category_to_class[a.category_id] for a in anns], dtype=np.int64)
        return TrainSample(image=image, masks=masks, labels=labels, space=self.name)


def augment(
    sample: TrainSample,
    size: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.75, 1.5),
    flip: bool = True,
    erase_prob: float = 0.0,
    crop: int | None = None,
) -> TrainSample:
    """Random scale (around fitting the long side to `size`), random crop to at most crop x crop (default
    size x size), h-flip, and with probability `erase_prob` random erasing (`erase`). A crop smaller than
    `size` shows objects at the scale the model sees at inference for a fraction of the pixels."""
    crop = size if crop is None else crop
    height, width = sample.image.shape[:2]
    scale = size / max(height, width) * rng.uniform(*scale_range)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    image = np.array(Image.fromarray(sample.image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    masks = np.stack(
        [np.asarray(Image.fromarray(m).resize((new_w, new_h), Image.Resampling.NEAREST)) for m in sample.masks]
    ) if len(sample.masks) else np.zeros((0, new_h, new_w), dtype=bool)
    top = int(rng.integers(0, max(new_h - crop, 0) + 1))
    left = int(rng.integers(0, max(new_w - crop, 0) + 1))
    image = image[top : top + crop, left : left + crop]
    masks = masks[:, top : top + crop, left : left + crop]
    if flip and rng.random() < 0.5:
        image, masks = image[:, ::-1], masks[:, :, ::-1]
    if erase_prob > 0 and rng.random() < erase_prob:
        image, masks = erase(image, masks, rng)
    keep = masks.any(axis=(1, 2))
    return TrainSample(
        image=np.ascontiguousarray(image),
        masks=np.ascontiguousarray(masks[keep]),
        labels=sample.labels[keep],
        space=sample.space,
    )


def erase(
    image: np.ndarray, masks: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.05, 0.5)
) -> tuple[np.ndarray, np.ndarray]:
    """Random erasing (Zhong et al., 2017) as an occluder: a rectangle of 5-50 % of the image (less when
    its aspect, 1/3-3, does not fit a long thin image), filled with a random color and pixel noise,
    covers the objects under it. The covered pixels leave every mask, because no class is there any
    more: the occluder belongs to no label space."""
    height, width = image.shape[:2]
    target = rng.uniform(*area) * height * width
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3)))
    h = int(min(height, max(1, round(np.sqrt(target * aspect)))))
    w = int(min(width, max(1, round(np.sqrt(target / aspect)))))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    fill = rng.uniform(0, 255, size=3) + rng.normal(0, rng.uniform(0, 30), size=(h, w, 3))
    image, masks = image.copy(), masks.copy()
    image[top : top + h, left : left + w] = np.clip(fill, 0, 255).astype(np.uint8)
    masks[:, top : top + h, left : left + w] = False
    return image, masks


def collate(samples: Sequence[TrainSample], size: int) -> Batch:
    """Samples of at most size x size -> one zero-padded (bottom/right) batch with per-sample targets."""
    pixels = torch.zeros(len(samples), 3, size, size)
    targets = []
    for b, s in enumerate(samples):
        h, w = s.image.shape[:2]
        image = torch.from_numpy(s.image).permute(2, 0, 1).float() / 255.0  # [3, h, w]
        pixels[b, :, :h, :w] = normalize(image)
        masks = torch.zeros(len(s.masks), size, size)
        masks[:, :h, :w] = torch.from_numpy(s.masks)
        targets.append(Target(space=s.space, masks=masks, labels=torch.from_numpy(s.labels)))
    return Batch(pixel_values=pixels, targets=targets)


class MixedSampler:
    """Endless batches mixing datasets: each sample picks a dataset uniformly, then an image."""

    def __init__(self, datasets: Sequence[CocoDataset], size: int, seed: int, augment_data: bool = True,
                 scale_range: tuple[float, float] = (0.75, 1.5), erase_prob: float = 0.0, crop: int | None = None):
        names = [d.name for d in datasets]
        if not datasets or len(set(names)) != len(names):
            raise DatasetError(f"Give one dataset per label space, each once: {names}.")
        self.datasets = list(datasets)
        self.size = size
        self.crop = size if crop is None else crop  # batches are crop x crop
        self.augment_data = augment_data
        self.scale_range = scale_range
        self.erase_prob = erase_prob
        self.rng = np.random.default_rng(seed)

    @property
    def label_spaces(self) -> list[LabelSpace]:
        return [d.label_space for d in self.datasets]

    def sample(self) -> TrainSample:
        dataset = self.datasets[int(self.rng.integers(len(self.datasets)))]
        sample = dataset[int(self.rng.integers(len(dataset)))]
        if self.augment_data:
            return augment(sample, self.size, self.rng, scale_range=self.scale_range, erase_prob=self.erase_prob,
                           crop=self.crop)
        return augment(sample, self.size, self.rng, scale_range=(1.0, 1.0), flip=False, crop=self.crop)

    def batch(self, batch_size: int) -> Batch:
        return collate([self.sample() for _ in range(batch_size)], self.crop)


def class_names_match(a: LabelSpace, b: LabelSpace) -> bool:
    """Same classes in the same order (normalized names): a checkpoint's space fits a dataset's."""
    return [normalize_name(n) for n in a.class_names] == [normalize_name(n) for n in b.class_names]
