"""COCO panoptic: segment-id packing, PNGs, reading a set and painting one from overlapping masks.

A panoptic PNG holds a segment id per pixel, packed as id = R + 256·G + 256²·B; 0 is void.
Segments cannot overlap there, so writing one from masks that may overlap needs a policy
(`paint`): which mask keeps a shared pixel, and every pixel another mask gives up is reported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from formats.coco import read_json
from formats.errors import FormatError
from formats.rle import RLE, decode_rle, encode_mask, rle_area, rle_bbox

# Which mask keeps a pixel that two masks of one label space share:
# "smaller": the smaller mask (a person on the road keeps its pixels), ties to the later one;
# "later": the later one in the annotation's order (the last one saved).
OVERLAP_POLICIES = ("smaller", "later")
DEFAULT_POLICY = "smaller"


# ---------------------------------------------------------------------------- id packing


def pack_ids(ids: np.ndarray) -> np.ndarray:
    """Segment ids [H, W] (0 = void, < 256³) -> RGB uint8 [H, W, 3]."""
    little = np.ascontiguousarray(ids, dtype="<u4")  # bytes R, G, B, 0 of each id
    return np.ascontiguousarray(little.view(np.uint8).reshape(*ids.shape, 4)[..., :3])


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """RGB [H, W, 3] -> int64 segment ids [H, W] (id = R + 256·G + 256²·B)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A panoptic PNG -> int64 segment ids [H, W]; FormatError when it cannot be read."""
    try:
        with Image.open(path) as image:
            return unpack_rgb(np.asarray(image.convert("RGB")))
    except FileNotFoundError:
        raise FormatError(f"panoptic PNG {path} does not exist") from None
    except OSError as exc:
        raise FormatError(f"panoptic PNG {path} cannot be read: {exc}") from None


def write_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write segment ids [H, W] as a panoptic PNG under a temporary name, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(pack_ids(ids)).save(fh, format="PNG", compress_level=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PanopticImage:
    """One image of a panoptic set: its `images` entry, its segments (info entry, RLE) and its void."""

    image: Mapping[str, Any]
    segments: list[tuple[Mapping[str, Any], RLE]]
    void: RLE


def load_panoptic_json(path: str | os.PathLike) -> dict[str, Any]:
    """A COCO panoptic JSON, its structure checked (images, annotations, categories)."""
    data = read_json(path)
    if not isinstance(data, Mapping):
        raise FormatError(f"{path} must be a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise FormatError(f"{path}: {key!r} must be a list")
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, Mapping) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise FormatError(f"{path}: categories[{i}] needs an integer 'id' and a 'name'")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, Mapping) or not all(isinstance(img.get(k), int) for k in ("id", "height", "width")):
            raise FormatError(f"{path}: images[{i}] needs integer 'id', 'height' and 'width'")
    return dict(data)


def read_panoptic(data: Mapping[str, Any], png_dir: str | os.PathLike, name: str = "panoptic"
                  ) -> Iterator[PanopticImage]:
    """Each annotated image of a panoptic set with its segments as RLE. FormatError names the entry
    for an unknown image or category, a missing PNG, a PNG of the wrong size, a PNG id missing from
    `segments_info`, or a `segments_info` id missing from the PNG (panopticapi's rules)."""
    images = {img["id"]: img for img in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    for i, entry in enumerate(data["annotations"]):
        where = f"{name}: annotations[{i}]"
        if not isinstance(entry, Mapping) or not {"image_id", "file_name", "segments_info"} <= set(entry):
            raise FormatError(f"{where} needs 'image_id', 'file_name' and 'segments_info'")
        image = images.get(entry["image_id"])
        if image is None:
            raise FormatError(f"{where}: image_id {entry['image_id']!r} is not in 'images'")
        where = f"{where} ({entry['file_name']})"
        ids = read_png(Path(png_dir) / entry["file_name"])
        if ids.shape != (image["height"], image["width"]):
            raise FormatError(f"{where}: the PNG is {ids.shape[0]}x{ids.shape[1]}, the image "
                              f"{image['height']}x{image['width']}")
        present = set(np.unique(ids).tolist()) - {0}
        listed = {}
        for j, seg in enumerate(entry["segments_info"]):
            if not isinstance(seg, Mapping) or not isinstance(seg.get("id"), int) or "category_id" not in seg:
                raise FormatError(f"{where}: segments_info[{j}] needs an integer 'id' and a 'category_id'")
            if seg["category_id"] not in categories:
                raise FormatError(f"{where}: segments_info[{j}] has category_id {seg['category_id']}, "
                                  f"which is not in 'categories'")
            if seg["id"] in listed:
                raise FormatError(f"{where}: segment id {seg['id']} is listed twice in segments_info")
            listed[seg["id"]] = seg
        if unlisted := sorted(present - set(listed)):
            raise FormatError(f"{where}: the PNG holds segment id(s) {unlisted[:5]} that segments_info does not list")
        if absent := sorted(set(listed) - present):
            raise FormatError(f"{where}: segments_info lists id(s) {absent[:5]} that the PNG does not hold")
        yield PanopticImage(image, [(seg, encode_mask(ids == seg_id)) for seg_id, seg in listed.items()],
                            encode_mask(ids == 0))


def panoptic_to_instances(panoptic: Mapping[str, Any], png_dir: str | os.PathLike,
                          label_space: str = "default") -> dict[str, Any]:
    """COCO panoptic JSON + PNG folder -> instances-format ground truth dict (docs/FORMATS.md).

    Every segment becomes an RLE annotation; pixels with id 0 become `images[i].void[label_space]`.
    Images without a panoptic annotation are left out.
    """
    categories = [
        {"id": c["id"], "name": c["name"], "isthing": int(c.get("isthing", 1)), "label_spaces": [label_space]}
        for c in panoptic["categories"]
    ]
    images, annotations = [], []
    for item in read_panoptic(panoptic, png_dir):
        images.append({**item.image, "void": {label_space: item.void}})
        for seg, rle in item.segments:
            annotations.append({  # panoptic segment ids are unique only within an image
                "id": len(annotations) + 1, "image_id": item.image["id"], "category_id": seg["category_id"],
                "segmentation": rle, "area": rle_area(rle), "bbox": rle_bbox(rle),
                "iscrowd": int(seg.get("iscrowd", 0))})
    return {"images": images, "annotations": annotations, "categories": categories}


# ---------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class Mask:
    """A mask to paint into a panoptic PNG. `key` names it in the report (a segment id)."""

    rle: RLE
    category_id: int
    isthing: bool
    iscrowd: bool = False
    key: str = ""


@dataclass(frozen=True)
class GivenUp:
    """Pixels of a mask that another mask kept. `whole`: nothing of it was left, so it is not in the set."""

    key: str
    category_id: int
    pixels: int
    whole: bool


def paint(masks: Sequence[Mask], height: int, width: int, policy: str = DEFAULT_POLICY
          ) -> tuple[np.ndarray, list[dict[str, Any]], list[GivenUp]]:
    """Paint the masks of one label space into one image's panoptic ids.

    Stuff masks of one category (not crowd) are first merged into one segment, as COCO panoptic
    has one segment per stuff class per image. Where masks still overlap, `policy` decides who
    keeps the pixel (OVERLAP_POLICIES). Returns ids uint32 [H, W] (0 = void), the `segments_info`
    list, and what every mask gave up.
    """
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"unknown overlap policy {policy!r}; use one of {OVERLAP_POLICIES}")
    merged: list[tuple[Mask, np.ndarray]] = []
    boxes: list[list[int]] = []  # x0, y0, x1, y1 (exclusive) of each merged mask
    stuff_index: dict[int, int] = {}
    for m in masks:
        mask = decode_rle(m.rle)  # [H, W]
        if mask.shape != (height, width):
            raise ValueError(f"mask {m.key or m.category_id} is {mask.shape}, the image ({height}, {width})")
        x, y, w, h = (int(v) for v in rle_bbox(m.rle))
        box = [x, y, x + w, y + h]
        stuff = not m.isthing and not m.iscrowd
        if stuff and m.category_id in stuff_index:
            k = stuff_index[m.category_id]
            first, union = merged[k]
            merged[k] = (first, union | mask)  # the report names the first segment of the region
            boxes[k] = [min(boxes[k][0], x), min(boxes[k][1], y), max(boxes[k][2], x + w), max(boxes[k][3], y + h)]
            continue
        if stuff:
            stuff_index[m.category_id] = len(merged)
        merged.append((m, mask))
        boxes.append(box)
    areas = [int(np.count_nonzero(mask)) for _, mask in merged]
    order = list(range(len(merged)))  # painted first to last: the last one keeps a shared pixel
    if policy == "smaller":
        order.sort(key=lambda k: (-areas[k], k))
    ids = np.zeros((height, width), dtype=np.uint32, order="F")  # [H, W], column-major as pycocotools decodes
    for k in order:
        ids[merged[k][1]] = k + 1
    kept = np.bincount(ids.ravel(), minlength=len(merged) + 1)
    infos, given_up = [], []
    for k, (m, _) in enumerate(merged):
        lost = areas[k] - int(kept[k + 1])
        if lost:
            given_up.append(GivenUp(m.key, m.category_id, lost, whole=bool(kept[k + 1] == 0)))
        if kept[k + 1] == 0:
            continue
        x0, y0, x1, y1 = boxes[k]
        if lost:  # the box of what is left, inside the box of the whole mask
            rows, cols = np.nonzero(ids[y0:y1, x0:x1] == k + 1)
            x0, y0, x1, y1 = x0 + int(cols.min()), y0 + int(rows.min()), x0 + int(cols.max()) + 1, y0 + int(rows.max()) + 1
        infos.append({"id": k + 1, "category_id": m.category_id, "iscrowd": int(m.iscrowd),
                      "area": int(kept[k + 1]), "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return ids, infos, given_up
