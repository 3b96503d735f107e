"""The app's view of one segment, whatever produced it (predictor, storage or a brush)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class SegmentView:
    """One segment as the UI shows it. `mask` is a bool HxW array in the image's pixel grid."""

    id: str
    class_name: str
    label_space: str
    mask: np.ndarray
    score: float | None = None
    isthing: bool = True

    @cached_property
    def area(self) -> int:  # masks are not changed in place (`with_mask` makes a new segment)
        return int(self.mask.sum())

    def with_mask(self, mask: np.ndarray) -> SegmentView:
        return replace(self, mask=mask.astype(bool))

    def relabeled(self, class_name: str, label_space: str) -> SegmentView:
        return replace(self, class_name=class_name, label_space=label_space)


def find_segment(segments: list[SegmentView], segment_id: str) -> SegmentView:
    for seg in segments:
        if seg.id == segment_id:
            return seg
    raise KeyError(segment_id)


def short_names(segments: list[SegmentView]) -> dict[str, str]:
    """Segment id → a name a person can say: the class and its number among the image's segments of that
    class, in their stored order ("person 1", "person 2", "car 1")."""
    counts: dict[str, int] = {}
    names = {}
    for seg in segments:
        counts[seg.class_name] = counts.get(seg.class_name, 0) + 1
        names[seg.id] = f"{seg.class_name} {counts[seg.class_name]}"
    return names
