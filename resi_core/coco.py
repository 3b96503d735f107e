"""COCO files for RESI: RLE helpers, loading and validating ground truth and predictions.

The file contract is docs/FORMATS.md. Everything here converts at the edge: JSON in,
plain frozen dataclasses with COCO RLE masks out (and back). A problem a user can cause
with a file raises one `FormatError` whose message names the file, the entry and the fault.

Mask conventions: a mask is a bool array of shape [H, W]; an RLE is the pycocotools dict
`{"size": [H, W], "counts": str}` (compressed counts, UTF-8 string).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]
DEFAULT_SPACE = "default"


class FormatError(ValueError):
    """A ground-truth or prediction file that breaks the contract in docs/FORMATS.md."""


# ---------------------------------------------------------------------------- RLE helpers


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
    return mask_utils.decode(_c_rle(rle)).astype(bool)


def decode_rles(rles: Sequence[RLE], height: int, width: int) -> np.ndarray:
    """Several RLEs of one image -> bool array [N, H, W]."""
    if not rles:
        return np.zeros((0, height, width), dtype=bool)
    stacked = mask_utils.decode([_c_rle(r) for r in rles])  # [H, W, N] uint8
    return stacked.transpose(2, 0, 1).astype(bool)


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(_c_rle(rle)))


def rle_bbox(rle: RLE) -> list[float]:
    """Tight box around the foreground, XYWH."""
    return [float(v) for v in mask_utils.toBbox(_c_rle(rle))]


def rle_boxes(rles: Sequence[RLE]) -> np.ndarray:
    """RLEs -> int64 boxes [N, 4] x0, y0, x1, y1 (exclusive), from pycocotools without decoding."""
    if not rles:
        return np.zeros((0, 4), dtype=np.int64)
    xywh = np.atleast_2d(mask_utils.toBbox([_c_rle(r) for r in rles])).astype(np.int64)  # [N, 4]
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def _c_rle(rle: RLE) -> RLE:
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


# ---------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    label_spaces: tuple[str, ...]
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageInfo:
    id: int
    height: int
    width: int
    file_name: str = ""
    # label space -> RLE of the pixels whose truth is unknown in that space.
    void: Mapping[str, RLE] = field(default_factory=dict)


@dataclass(frozen=True)
class GTAnnotation:
    id: int
    image_id: int
    category_id: int
    rle: RLE
    iscrowd: bool
    # The file's `area` when given (COCOeval's area ranges use it), else the RLE area.
    area: float


@dataclass(frozen=True)
class Prediction:
    image_id: int
    category_id: int
    rle: RLE
    score: float
    label_space: str | None = None

    def to_json(self) -> dict:
        out = {"image_id": self.image_id, "category_id": self.category_id, "segmentation": self.rle}
        out["score"] = self.score
        if self.label_space is not None:
            out["label_space"] = self.label_space
        return out


@dataclass(frozen=True)
class GroundTruth:
    images: Mapping[int, ImageInfo]
    categories: Mapping[int, Category]
    annotations: tuple[GTAnnotation, ...]
    # Raw JSON, kept so that pycocotools can be handed the file as it was.
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def label_spaces(self) -> list[str]:
        """Label-space names in first-seen category order."""
        return list(dict.fromkeys(s for c in self.categories.values() for s in c.label_spaces))

    def annotations_by_image(self) -> dict[int, list[GTAnnotation]]:
        out: dict[int, list[GTAnnotation]] = {i: [] for i in self.images}
        for ann in self.annotations:
            out[ann.image_id].append(ann)
        return out


# ---------------------------------------------------------------------------- loading


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file raises FormatError with the location."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise FormatError(f"{path} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _require(entry: Any, keys: Sequence[str], where: str) -> None:
    if not isinstance(entry, Mapping):
        raise FormatError(f"{where} must be a JSON object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise FormatError(f"{where} is missing key(s) {', '.join(repr(k) for k in missing)}")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatError(f"{where} must be an integer, got {value!r}")
    return value


def _load_category(entry: Any, where: str) -> Category:
    _require(entry, ("id", "name"), where)
    spaces = entry.get("label_spaces") or [DEFAULT_SPACE]
    if not isinstance(spaces, list) or not all(isinstance(s, str) and s for s in spaces):
        raise FormatError(f"{where}: label_spaces must be a list of names")
    return Category(
        id=_int(entry["id"], f"{where}.id"),
        name=str(entry["name"]),
        isthing=bool(entry.get("isthing", 1)),
        label_spaces=tuple(spaces),
        synonyms=tuple(str(s) for s in entry.get("synonyms", ())),
    )


def _load_image(entry: Any, where: str) -> ImageInfo:
    _require(entry, ("id", "height", "width"), where)
    height, width = _int(entry["height"], f"{where}.height"), _int(entry["width"], f"{where}.width")
    if height <= 0 or width <= 0:
        raise FormatError(f"{where}: height and width must be positive")
    void_in = entry.get("void") or {}
    if not isinstance(void_in, Mapping):
        raise FormatError(f"{where}.void must be an object {{label_space: RLE}}")
    void = {
        str(space): segmentation_to_rle(rle, height, width, f"{where}.void[{space!r}]")
        for space, rle in void_in.items()
    }
    return ImageInfo(_int(entry["id"], f"{where}.id"), height, width, str(entry.get("file_name", "")), void)


def load_ground_truth(source: str | os.PathLike | Mapping[str, Any]) -> GroundTruth:
    """Load and validate a COCO instances ground-truth file (docs/FORMATS.md) or its parsed dict."""
    name = "ground truth" if isinstance(source, Mapping) else str(source)
    data = source if isinstance(source, Mapping) else read_json(source)
    _require(data, ("images", "annotations", "categories"), name)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise FormatError(f"{name}: {key!r} must be a list")

    categories: dict[int, Category] = {}
    for i, entry in enumerate(data["categories"]):
        cat = _load_category(entry, f"{name}: categories[{i}]")
        if cat.id in categories:
            raise FormatError(f"{name}: category id {cat.id} appears twice")
        categories[cat.id] = cat
    images: dict[int, ImageInfo] = {}
    for i, entry in enumerate(data["images"]):
        img = _load_image(entry, f"{name}: images[{i}]")
        if img.id in images:
            raise FormatError(f"{name}: image id {img.id} appears twice")
        images[img.id] = img

    annotations = []
    for i, entry in enumerate(data["annotations"]):
        where = f"{name}: annotations[{i}]"
        _require(entry, ("image_id", "category_id", "segmentation"), where)
        image = _known_image(images, entry["image_id"], where)
        category_id = _known_category(categories, entry["category_id"], where)
        rle = segmentation_to_rle(entry["segmentation"], image.height, image.width, where)
        area = entry.get("area")
        annotations.append(
            GTAnnotation(
                id=_int(entry.get("id", i + 1), f"{where}.id"),
                image_id=image.id,
                category_id=category_id,
                rle=rle,
                iscrowd=bool(entry.get("iscrowd", 0)),
                area=float(area) if isinstance(area, int | float) else float(rle_area(rle)),
            )
        )
    return GroundTruth(images, categories, tuple(annotations), raw=data)


def _known_image(images: Mapping[int, ImageInfo], image_id: Any, where: str) -> ImageInfo:
    image = images.get(_int(image_id, f"{where}.image_id"))
    if image is None:
        raise FormatError(f"{where}: image_id {image_id} is not an image of the ground truth")
    return image


def _known_category(categories: Mapping[int, Category], category_id: Any, where: str) -> int:
    if _int(category_id, f"{where}.category_id") not in categories:
        raise FormatError(f"{where}: category_id {category_id} is not a category of the ground truth")
    return category_id


def load_predictions(
    source: str | os.PathLike | Sequence[Mapping[str, Any]], gt: GroundTruth, allow_empty: bool = False
) -> list[Prediction]:
    """Load and validate a COCO results list against `gt` (image ids, category ids, mask sizes).

    An empty list raises FormatError unless `allow_empty`: an empty file is almost always a
    broken export, and every metric would silently read 0.
    """
    name = "predictions" if not isinstance(source, str | os.PathLike) else str(source)
    data = read_json(source) if isinstance(source, str | os.PathLike) else source
    if not isinstance(data, list):
        raise FormatError(f"{name} must be a JSON list of results, got {type(data).__name__}")
    if not data and not allow_empty:
        raise FormatError(f"{name} holds no predictions (an empty list): nothing to evaluate")
    spaces = set(gt.label_spaces)
    preds = []
    for i, entry in enumerate(data):
        where = f"{name}: [{i}]"
        _require(entry, ("image_id", "category_id", "segmentation", "score"), where)
        image = _known_image(gt.images, entry["image_id"], where)
        category_id = _known_category(gt.categories, entry["category_id"], where)
        score = entry["score"]
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            raise FormatError(f"{where}: score must be a finite number, got {score!r}")
        space = entry.get("label_space")
        if space is not None:
            if space not in spaces:
                raise FormatError(f"{where}: label_space {space!r} is not one of {sorted(spaces)}")
            if space not in gt.categories[category_id].label_spaces:
                raise FormatError(f"{where}: category_id {category_id} is not in label space {space!r}")
        rle = segmentation_to_rle(entry["segmentation"], image.height, image.width, where)
        preds.append(Prediction(image.id, category_id, rle, float(score), space))
    return preds


# ---------------------------------------------------------------------------- panoptic


def read_panoptic_png(path: str | os.PathLike) -> np.ndarray:
    """COCO panoptic PNG -> int64 segment-id map [H, W] (id = R + 256·G + 256²·B, 0 = void)."""
    from PIL import Image  # only panoptic conversion needs Pillow

    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def panoptic_to_instances(
    panoptic: Mapping[str, Any], png_dir: str | os.PathLike, label_space: str = DEFAULT_SPACE
) -> dict[str, Any]:
    """COCO panoptic JSON + PNG folder -> instances-format ground truth dict (docs/FORMATS.md).

    Every segment becomes an RLE annotation; pixels with id 0 become `images[i].void[label_space]`.
    Images without a panoptic annotation are left out.
    """
    categories = [
        {"id": c["id"], "name": c["name"], "isthing": int(c.get("isthing", 1)), "label_spaces": [label_space]}
        for c in panoptic["categories"]
    ]
    images_by_id = {img["id"]: img for img in panoptic["images"]}
    images, annotations = [], []
    for entry in panoptic["annotations"]:
        img = images_by_id[entry["image_id"]]
        ids = read_panoptic_png(Path(png_dir) / entry["file_name"])
        void = encode_mask(ids == 0)
        images.append({**img, "void": {label_space: void}})
        for seg in entry["segments_info"]:
            rle = encode_mask(ids == seg["id"])
            annotations.append(
                {
                    # Panoptic segment ids are unique only within an image.
                    "id": len(annotations) + 1,
                    "image_id": img["id"],
                    "category_id": seg["category_id"],
                    "segmentation": rle,
                    "area": rle_area(rle),
                    "bbox": rle_bbox(rle),
                    "iscrowd": int(seg.get("iscrowd", 0)),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}
