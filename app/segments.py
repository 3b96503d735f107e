"""The app's view of one segment, whatever produced it (predictor, storage or a brush)."""

from __future__ import annotations

from dataclasses import dataclass, replace

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

    @property
    def area(self) -> int:
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
