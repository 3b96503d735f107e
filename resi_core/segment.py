"""The predictor's output unit: one segment with a bool HxW mask and where it came from."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from formats.rle import encode_mask


class Source(NamedTuple):
    """One decoder query that produced (part of) a segment.

    label_space: the label space of the class (`adhoc` for an ad-hoc class set);
    class_name: the class's name in that label space; query_index: the query in its set;
    query_set: whose query set ran the pass (the label space itself for trained spaces,
    the chosen trained set for ad-hoc classes). Two sources are from the same pass when
    their query sets are equal.
    """

    label_space: str
    class_name: str
    query_index: int
    query_set: str


@dataclass(frozen=True, eq=False)
class Segment:
    """A predicted segment.

    mask: bool [H, W] at the image's full resolution (read-only);
    class_name: the class of the mixed label space; label_spaces: the spaces whose passes
    produced it (several after ESF fused duplicates); score in [0, 1]; sources: every
    query behind it (a merged stuff region or an ESF-fused segment has several).
    """

    id: str
    mask: np.ndarray
    class_name: str
    label_spaces: tuple[str, ...]
    score: float
    isthing: bool
    sources: tuple[Source, ...]

    def __post_init__(self) -> None:
        if self.mask.dtype != np.bool_ or self.mask.ndim != 2:
            raise ValueError(f"Segment mask must be bool HxW, got {self.mask.dtype} {self.mask.shape}.")
        self.mask.flags.writeable = False

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def bbox_xywh(self) -> tuple[int, int, int, int]:
        """Tight box (x, y, width, height) in pixels; (0, 0, 0, 0) for an empty mask."""
        rows = np.flatnonzero(self.mask.any(axis=1))
        cols = np.flatnonzero(self.mask.any(axis=0))
        if rows.size == 0:
            return (0, 0, 0, 0)
        return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))

    @property
    def query_sets(self) -> tuple[str, ...]:
        """The passes (query sets) this segment came from."""
        return tuple(dict.fromkeys(s.query_set for s in self.sources))

    def to_rle(self) -> dict:
        """COCO RLE {"size": [H, W], "counts": str} (pycocotools encoding, counts decoded to UTF-8)."""
        return encode_mask(self.mask)


def segment_id(image_key: str, kind: str, sources: Iterable[Source]) -> str:
    """Deterministic id from the image hash, the output kind ("segment"/"instance") and the sources."""
    text = "|".join(
        [image_key, kind, *(f"{s.query_set}/{s.label_space}/{s.class_name}/{s.query_index}" for s in sources)]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:16]
