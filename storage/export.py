"""COCO export of a project's accepted annotations (docs/FORMATS.md).

- `images/<id>-<original name>`: the image files (when a file store is given).
- `instances.json`: COCO instances with RLE masks; overlaps across label spaces are kept.
  Categories carry the `isthing` and `label_spaces` extensions.
- `panoptic/<label space>.json` + `panoptic/<label space>/<image>.png`: one COCO panoptic set
  per label space (characters unsafe in a file name replaced, see `path_safe`). A segment fused
  from several spaces ("street+adhoc") is in the set of each. Panoptic segments cannot overlap, so an image whose masks overlap within
  that label space is left out of it and listed in the summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np
from PIL import Image as PILImage
from pycocotools import mask as mask_utils
from sqlalchemy.orm import Session

from storage.files import FileStore, load_rgb
from storage.names import label_spaces_of, normalize_name, path_safe
from storage.repo import AcceptedImage, accepted_annotations


@dataclass
class ExportSummary:
    instances_path: Path
    n_images: int
    n_annotations: int
    panoptic: dict[str, Path] = field(default_factory=dict)  # label space -> JSON path
    skipped: dict[str, list[int]] = field(default_factory=dict)  # label space -> image ids with overlaps


def _rle(segment_rle: dict[str, Any]) -> dict[str, Any]:
    return {"size": segment_rle["size"], "counts": segment_rle["counts"].encode("ascii")}


def _categories(images: Sequence[AcceptedImage]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    by_key: dict[str, dict[str, Any]] = {}
    for image in images:
        for seg in image.segments:
            cat = by_key.setdefault(normalize_name(seg.class_name),
                                    {"name": seg.class_name, "isthing": int(seg.isthing), "label_spaces": []})
            for space in label_spaces_of(seg.label_space):  # a fused segment belongs to each of its spaces
                if space not in cat["label_spaces"]:
                    cat["label_spaces"].append(space)
    categories = []
    ids: dict[str, int] = {}
    for i, key in enumerate(sorted(by_key), start=1):
        categories.append({"id": i, "supercategory": "", **by_key[key]})
        ids[key] = i
    return categories, ids


def image_file_name(image: AcceptedImage) -> str:
    """The exported image's file name: "<id>-<original stem><extension>", the stem with characters
    unsafe in a path replaced by "_" (letters of any script stay; the id keeps names unique). An
    image with an EXIF rotation is written rotated, as PNG, since its masks are in the rotated frame."""
    original = PurePath(image.original_name.replace("\\", "/")).name
    stem, suffix = PurePath(original).stem, PurePath(original).suffix
    if not re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix):
        stem, suffix = original, ""
    stem = re.sub(r"[^\w .()-]", "_", stem).strip(" .") or "image"
    if image.exif_orientation != 1:
        suffix = ".png"
    return f"{image.image_id}-{stem}{suffix}"


def write_images(images: Sequence[AcceptedImage], store: FileStore, out_dir: Path) -> None:
    """The image files of an export, under the names `image_file_name` gives."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        data = store.read(image.sha256)
        target = out_dir / image_file_name(image)
        if image.exif_orientation == 1:
            target.write_bytes(data)
        else:
            load_rgb(data).save(target, format="PNG")


def coco_instances(images: Sequence[AcceptedImage]) -> dict[str, Any]:
    """COCO instances dict; image ids are the database ids, file names those of `image_file_name`."""
    categories, cat_ids = _categories(images)
    coco_images, annotations = [], []
    for image in images:
        coco_images.append({"id": image.image_id, "file_name": image_file_name(image), "sha256": image.sha256,
                            "original_name": image.original_name, "width": image.width, "height": image.height})
        for seg in image.segments:
            rle = _rle(seg.rle)
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image.image_id,
                "category_id": cat_ids[normalize_name(seg.class_name)],
                "segmentation": seg.rle,
                "area": int(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "iscrowd": 0,
                "label_space": seg.label_space,
            })
    return {"info": {"description": "RESI accepted annotations"}, "images": coco_images,
            "annotations": annotations, "categories": categories}


def _panoptic(images: Sequence[AcceptedImage], space: str, cat_ids: dict[str, int], png_dir: Path
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int]]:
    png_dir.mkdir(parents=True, exist_ok=True)
    coco_images, annotations, skipped = [], [], []
    for image in images:
        segs = [s for s in image.segments if space in label_spaces_of(s.label_space)]
        if not segs:
            continue
        ids = np.zeros((image.height, image.width), dtype=np.uint32)  # [H, W] panoptic segment id, 0 = void
        info = []
        overlaps = False
        for k, seg in enumerate(segs, start=1):
            mask = mask_utils.decode(_rle(seg.rle)).astype(bool)  # [H, W]
            if (ids[mask] != 0).any():
                overlaps = True
                break
            ids[mask] = k
            rle = _rle(seg.rle)
            info.append({"id": k, "category_id": cat_ids[normalize_name(seg.class_name)], "iscrowd": 0,
                         "area": int(mask.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
        if overlaps:
            skipped.append(image.image_id)
            continue
        rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)  # [H, W, 3]
        name = f"{image.sha256}.png"
        PILImage.fromarray(rgb).save(png_dir / name)
        coco_images.append({"id": image.image_id, "file_name": image_file_name(image), "width": image.width,
                            "height": image.height})
        annotations.append({"image_id": image.image_id, "file_name": name, "segments_info": info})
    return coco_images, annotations, skipped


def export_coco(session: Session, project_id: int, out_dir: Path, store: FileStore | None = None) -> ExportSummary:
    """Write the project's accepted annotations as COCO instances and per-label-space panoptic; with
    `store`, the image files too (under images/)."""
    images = accepted_annotations(session, project_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    if store is not None:
        write_images(images, store, out_dir / "images")
    instances = coco_instances(images)
    instances_path = out_dir / "instances.json"
    instances_path.write_text(json.dumps(instances))
    summary = ExportSummary(instances_path, len(images), len(instances["annotations"]))
    cat_ids = {normalize_name(c["name"]): c["id"] for c in instances["categories"]}
    spaces = sorted({space for image in images for seg in image.segments for space in label_spaces_of(seg.label_space)})
    for space in spaces:
        space_categories = [c for c in instances["categories"] if space in c["label_spaces"]]
        folder = path_safe(space)
        coco_images, annotations, skipped = _panoptic(images, space, cat_ids, out_dir / "panoptic" / folder)
        path = out_dir / "panoptic" / f"{folder}.json"
        path.write_text(json.dumps({"images": coco_images, "annotations": annotations,
                                    "categories": space_categories}))
        summary.panoptic[space] = path
        if skipped:
            summary.skipped[space] = skipped
    return summary
