"""The COCO RLE codec (on pycocotools) and segmentation validation.

A mask is a bool array [H, W]; an RLE is the pycocotools dict `{"size": [H, W], "counts": str}`
(compressed counts as a UTF-8 string: JSON-ready). Every package encodes and decodes masks here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from formats.errors import FormatError

RLE = dict[str, Any]



def encode_mask(mask: np.ndarray) -> RLE:
    """Bool/0-1 mask [H, W] -> COCO RLE with `counts` as a str (JSON-ready)."""
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a [H, W] mask, got shape {mask.shape}")
    if mask.dtype == np.bool_ and mask.flags.f_contiguous:
        mask = mask.view(np.uint8)  # no copy: already in the column-major order RLE runs in
    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: RLE) -> np.ndarray:
    """COCO RLE -> bool mask [H, W]."""
    return mask_utils.decode(c_rle(rle)).astype(bool)


def decode_rles(rles: Sequence[RLE], height: int, width: int) -> np.ndarray:
    """Several RLEs of one image -> bool array [N, H, W]."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    stacked = mask_utils.decode([c_rle(r) for r in rles])  # [H, W, N] uint8
    return stacked.transpose(2, 0, 1).astype(bool)


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(c_rle(rle)))


def rle_bbox(rle: RLE) -> list[float]:
    """Tight box around the foreground, XYWH."""
    return [float(v) for v in mask_utils.toBbox(c_rle(rle))]


def rle_boxes(rles: Sequence[RLE]) -> np.ndarray:
    """RLEs -> int64 boxes [N, 4] x0, y0, x1, y1 (exclusive), from pycocotools without decoding."""
    if not rles:
        return np.zeros((0, 4), dtype=np.int64)
    xywh = np.atleast_2d(mask_utils.toBbox([c_rle(r) for r in rles])).astype(np.int64)  # [N, 4]
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def c_rle(rle: RLE) -> RLE:
    """The form pycocotools' C layer wants: counts as bytes."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _compressed_total(counts: str) -> int:
    """Sum of the run lengths in a compressed RLE string (pycocotools' rleFrString).

    pycocotools decodes a too-short RLE into uninitialized memory instead of failing, so
    the total is checked against H*W before any decode.
    """
    runs: list[int] = []
    pos = 0
    data = counts.encode("ascii")
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(data):
                raise ValueError("truncated RLE counts")
            char = data[pos] - 48
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            pos += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("negative run length")
        runs.append(value)
    return sum(runs)


def segmentation_to_rle(segmentation: Any, height: int, width: int, where: str) -> RLE:
    """Polygons, uncompressed RLE or compressed RLE -> compressed RLE of size [height, width].

    Raises FormatError (naming `where`) when the segmentation is malformed or its size is
    not the image's size.
    """
    if isinstance(segmentation, list):
        polys = [p for p in segmentation if isinstance(p, list)]
        if len(polys) != len(segmentation) or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise FormatError(f"{where}: polygon segmentation must be lists of at least 3 x,y pairs")
        merged = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        return {"size": [height, width], "counts": merged["counts"].decode("ascii")}
    if not isinstance(segmentation, Mapping) or "size" not in segmentation or "counts" not in segmentation:
        raise FormatError(f"{where}: segmentation must be a COCO RLE {{'size', 'counts'}} or polygons")
    size = segmentation["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise FormatError(f"{where}: RLE size must be [height, width], got {size!r}")
    if size != [height, width]:
        raise FormatError(
            f"{where}: mask size {size[0]}x{size[1]} differs from the image size {height}x{width}"
        )
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise FormatError(f"{where}: uncompressed RLE counts must be non-negative and sum to H*W")
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    if not isinstance(counts, str):
        raise FormatError(f"{where}: RLE counts must be a string or a list of ints")
    try:
        total = _compressed_total(counts)
    except (ValueError, UnicodeEncodeError) as exc:
        raise FormatError(f"{where}: RLE counts are corrupt ({exc})") from None
    if total != height * width:
        raise FormatError(f"{where}: RLE counts cover {total} pixels, the image has {height * width}")
    return {"size": [height, width], "counts": counts}
