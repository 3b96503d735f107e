"""Deterministic samples of the world's source datasets and mixed benchmarks.

Image i of (name, split, seed) depends only on those four values (its own random generator
is seeded with them), so the first n images of a larger set are exactly the set of size n.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from resi_core.labels import LabelError
from resi_core.world.annotate import GTSegment, annotate
from resi_core.world.render import Scene
from resi_core.world.scenes import compose
from resi_core.world.spaces import BENCHMARKS, DATASETS, SCENES, SPLITS, involved_spaces

# Stable codes for seeding (never hash(): it changes between processes). New names take new codes at
# the end, so the images of the older ones never change.
_NAME_CODES = {name: code for code, name in enumerate(
    ("street", "portrait", "drive", "parts", "M1", "M2", "M3", "M4", "avenue", "M5"))}
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}


@dataclass(frozen=True)
class WorldSample:
    """One generated image with ground truth for every label space of its dataset or benchmark."""

    image_id: int  # index + 1 (COCO ids start at 1)
    index: int
    image: np.ndarray  # HxWx3 uint8 RGB
    segments: dict[str, list[GTSegment]]  # label space -> non-overlapping (class, bool HxW mask, iscrowd)
    void: dict[str, np.ndarray]  # label space -> bool HxW pixels of dropped tiny segments; only non-empty
    scene: Scene  # the rendered objects and parts, for inspection and tests

    @property
    def domain(self) -> str:
        return self.scene.domain


def make_sample(
    name: str, split: str, index: int, seed: int = 0, size: int = 128, domains: Sequence[str] | None = None
) -> WorldSample:
    """Image `index` of dataset or benchmark `name` at size x size px.

    A source dataset draws scenes from its own domain (avenue: street's, `SCENES`); a benchmark
    cycles through its label spaces' domains (image i uses domain i mod k), so every involved
    class appears. `domains` (a source dataset only) replaces its own domain by these datasets'
    scene kinds, cycled the same way (a kind listed twice is drawn twice as often): street's label
    space annotated on portrait close-ups, as real datasets' broader images would be. The ground
    truth follows the dataset's policy whatever the scene kind.
    """
    spaces = involved_spaces(name)
    if split not in _SPLIT_CODES:
        raise LabelError(f"Unknown split {split!r}; choose from {', '.join(SPLITS)}.")
    kinds = _scene_kinds(name, spaces, domains)
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], _NAME_CODES[name], index])
    scene = compose(kinds[index % len(kinds)], rng, size, size)
    segments, void = {}, {}
    for space in spaces:
        segments[space], space_void = annotate(scene, space)
        if space_void is not None:
            void[space] = space_void
    return WorldSample(index + 1, index, scene.image, segments, void, scene)


def _scene_kinds(name: str, spaces: tuple[str, ...], domains: Sequence[str] | None) -> tuple[str, ...]:
    if domains is None:
        return tuple(SCENES[s] for s in spaces)
    if name in BENCHMARKS:
        raise LabelError(f"Scene kinds can only be chosen for a source dataset, not for benchmark {name!r}.")
    unknown = [d for d in domains if d not in DATASETS]
    if unknown or not domains:
        raise LabelError(f"Unknown scene kinds {unknown or list(domains)}; choose from {', '.join(DATASETS)}.")
    return tuple(SCENES[d] for d in domains)


def generate(
    name: str, split: str, n: int, seed: int = 0, size: int = 128, domains: Sequence[str] | None = None
) -> Iterator[WorldSample]:
    """Images 0..n-1 of dataset or benchmark `name` (see `make_sample`). Bad arguments raise
    LabelError here, before the first image."""
    if n <= 0:
        raise LabelError(f"The number of images must be positive, got {n}.")
    if size < 32:
        raise LabelError(f"Images must be at least 32 px, got {size}.")
    _scene_kinds(name, involved_spaces(name), domains)
    return (make_sample(name, split, index, seed, size, domains) for index in range(n))
