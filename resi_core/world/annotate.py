"""Annotation policies: what each source dataset's annotators label in a rendered scene (SPEC §6).

A policy turns a Scene (visible object and part masks) into one label space's ground truth:
a list of (class name, bool HxW mask, iscrowd) that never overlap within the label space.
Across label spaces the masks overlap (person vs face, car vs wheel, vehicle vs car), and two spaces
may give one class name two extents (street's car includes its wheels and windows, avenue's does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np

from resi_core.world.render import Scene, VisibleObject

# Segments smaller than this are dropped in every label space, and their pixels are void:
# no annotator could tell what a handful of pixels is.
MIN_SEGMENT_AREA = 8


class GTSegment(NamedTuple):
    class_name: str
    mask: np.ndarray  # bool HxW, read-only (may be shared by several label spaces)
    iscrowd: bool


def _union(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for m in masks:
        out |= m
    return out


def _street(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """Whole people (faces and hats included), cars, trucks; road and sky as stuff."""
    things = [(o.kind, o.mask) for o in scene.objects if o.kind in ("person", "car", "truck")]
    return things + _stuff(scene, {"road": ("road",), "sky": ("sky",)})


def _portrait(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """Faces and hair of every person, one instance each; everything else is left unlabeled."""
    return [(p.kind, p.mask) for o in scene.objects if o.kind == "person" for p in o.parts if p.kind in ("face", "hair")]


def _drive(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """Pedestrians (= person), vehicles (car or truck); road; vegetation (trees and grass) as stuff."""
    rename = {"person": "pedestrian", "car": "vehicle", "truck": "vehicle"}
    things = [(rename[o.kind], o.mask) for o in scene.objects if o.kind in rename]
    return things + _stuff(scene, {"road": ("road",), "vegetation": ("tree", "grass")})


def _parts(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """Every visible wheel and window of a car or truck, one instance each."""
    return [
        (p.kind, p.mask)
        for o in scene.objects
        if o.kind in ("car", "truck")
        for p in o.parts
        if p.kind in ("wheel", "window")
    ]


# avenue's guide: what each class leaves out of street's extent (parts of the object).
AVENUE_LEAVES_OUT: dict[str, tuple[str, ...]] = {
    "person": ("hair", "hat"),
    "car": ("wheel", "window"),
    "truck": ("wheel", "window"),
    "road": ("lane mark",),
}


def _avenue(scene: Scene) -> list[tuple[str, np.ndarray]]:
    """street's class names with other extents: people without hair and hat, cars and trucks without
    wheels and windows, the road without its lane marks; sky as street's. What is left out is
    unlabeled (background), as everything is that a space has no class for."""
    shape = scene.image.shape[:2]
    things = [(o.kind, _without(o, AVENUE_LEAVES_OUT[o.kind], shape)) for o in scene.objects
              if o.kind in ("person", "car", "truck")]
    return things + _stuff(scene, {"road": ("road",), "sky": ("sky",)}, AVENUE_LEAVES_OUT)


def _without(obj: VisibleObject, part_kinds: tuple[str, ...], shape: tuple[int, int]) -> np.ndarray:
    """The object's visible mask minus its visible parts of `part_kinds`."""
    cut = [p.mask for p in obj.parts if p.kind in part_kinds]
    return obj.mask & ~_union(cut, shape) if cut else obj.mask


def _stuff(
    scene: Scene, classes: dict[str, tuple[str, ...]], leaves_out: dict[str, tuple[str, ...]] | None = None
) -> list[tuple[str, np.ndarray]]:
    """One segment per stuff class: the union of the visible objects of its kinds (minus the parts
    of the kinds `leaves_out[class]` names)."""
    shape = scene.image.shape[:2]
    out = []
    for name, kinds in classes.items():
        cut = (leaves_out or {}).get(name, ())
        masks = [_without(o, cut, shape) for o in scene.objects if o.kind in kinds]
        if masks:
            out.append((name, masks[0] if len(masks) == 1 else _union(masks, shape)))
    return out


POLICIES: dict[str, Callable[[Scene], list[tuple[str, np.ndarray]]]] = {
    "street": _street,
    "portrait": _portrait,
    "drive": _drive,
    "parts": _parts,
    "avenue": _avenue,
}


def annotate(scene: Scene, space: str) -> tuple[list[GTSegment], np.ndarray | None]:
    """Ground truth of label space `space` for `scene`: (segments, void).

    void is a bool HxW mask of the pixels of dropped tiny segments, or None when nothing was
    dropped. Segment masks are bool HxW and do not overlap each other.
    """
    segments, dropped = [], []
    for name, mask in POLICIES[space](scene):
        if np.count_nonzero(mask) < MIN_SEGMENT_AREA:
            dropped.append(mask)
        else:
            segments.append(GTSegment(name, mask, False))
    void = _union(dropped, scene.image.shape[:2]) if dropped else None
    return segments, void
