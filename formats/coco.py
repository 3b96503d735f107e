"""COCO instances files: loading and validating ground truth and predictions, and writing them.

The file contract is docs/FORMATS.md. Everything here converts at the edge: JSON in,
plain frozen dataclasses with COCO RLE masks out (and back). A problem a user can cause
with a file raises one `FormatError` whose message names the file, the entry and the fault.
Masks are COCO RLE (`formats.rle`).
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

from formats.errors import FormatError
from formats.rle import RLE, rle_area, rle_bbox, segmentation_to_rle

DEFAULT_SPACE = "default"

__all__ = ["DEFAULT_SPACE", "RLE", "Category", "FormatError", "GTAnnotation", "GroundTruth", "ImageInfo",
           "Prediction", "annotation_entry", "load_ground_truth", "load_predictions", "read_json", "write_json"]


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


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 1) -> None:
    """Write JSON atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent, separators=None if indent else (",", ":"))
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


# ---------------------------------------------------------------------------- writing


def annotation_entry(ann_id: int, image_id: int, category_id: int, rle: RLE, iscrowd: bool = False,
                     **extra: Any) -> dict[str, Any]:
    """One COCO instances annotation with its `area` and XYWH `bbox` computed from the RLE."""
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": rle_area(rle), "bbox": rle_bbox(rle), "iscrowd": int(iscrowd), **extra}
