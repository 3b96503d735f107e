"""COCO export of a project's accepted annotations (docs/FORMATS.md).

- `images/<id>-<original name>`: the image files (when a file store is given).
- `instances.json`: COCO instances with RLE masks; overlaps are kept. One category per class name
  and `isthing` (a typed thing `sky` and street's stuff `sky` are two categories), with the
  `isthing` and `label_spaces` extensions.
- `panoptic/<label space>.json` + `panoptic/<label space>/<sha256>.png`: one COCO panoptic set per
  label space (characters unsafe in a file name replaced, see `formats.names.path_safe`). A segment
  fused from several spaces ("street+adhoc") is in the set of each. Stuff is merged per class per
  image. Where masks of one space overlap, the overlap policy (`formats.panoptic.OVERLAP_POLICIES`,
  default: the smaller mask keeps the pixel) decides, and every pixel given up is listed in
  `panoptic/overlaps.json`. No image is left out.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from PIL import Image as PILImage
from sqlalchemy.orm import Session

from formats.coco import annotation_entry, write_json
from formats.images import decode_image
from formats.names import label_spaces_of, normalize_name, path_safe
from formats.panoptic import DEFAULT_POLICY, Mask, paint, write_png
from storage.files import FileStore
from storage.models import ImageStatus
from storage.repo import AcceptedImage, accepted_annotations, list_label_spaces, status_counts


@dataclass(frozen=True)
class GivenUp:
    """Pixels of an accepted segment that the panoptic set of `label_space` gave to another segment."""

    label_space: str
    image_id: int
    segment_id: str
    class_name: str
    pixels: int
    whole: bool  # nothing was left of it, so it is not in that panoptic set

    def to_json(self) -> dict[str, Any]:
        return {"label_space": self.label_space, "image_id": self.image_id, "segment_id": self.segment_id,
                "class_name": self.class_name, "pixels": self.pixels, "whole": self.whole}


@dataclass
class ExportSummary:
    instances_path: Path
    n_images: int
    n_annotations: int
    n_not_accepted: int = 0  # images of the project left out because they are not accepted
    policy: str = DEFAULT_POLICY
    panoptic: dict[str, Path] = field(default_factory=dict)  # label space -> JSON path
    given_up: list[GivenUp] = field(default_factory=list)

    def overlaps(self) -> dict[str, tuple[int, int, int]]:
        """{label space: (pixels given up, segments that gave some up, images)} for spaces with overlaps."""
        out: dict[str, tuple[int, int, int]] = {}
        for space in dict.fromkeys(g.label_space for g in self.given_up):
            rows = [g for g in self.given_up if g.label_space == space]
            out[space] = (sum(g.pixels for g in rows), len(rows), len({g.image_id for g in rows}))
        return out


def category_key(class_name: str, isthing: bool) -> tuple[str, bool]:
    """Segments of one category: same normalized class name and same thing/stuff kind."""
    return normalize_name(class_name), bool(isthing)


def _categories(images: Sequence[AcceptedImage], defined: Sequence[tuple[str, str, bool]] = ()
                ) -> list[dict[str, Any]]:
    """One category per (class name, isthing) of the segments, plus the defined (space, class, isthing)
    of the project's label spaces (an import's classes that no segment uses yet, when it kept them)."""
    by_key: dict[tuple[str, bool], dict[str, Any]] = {}
    used = [(space, seg.class_name, seg.isthing) for image in images for seg in image.segments
            for space in label_spaces_of(seg.label_space)]  # a fused segment belongs to each of its spaces
    for space, name, isthing in [*used, *defined]:
        cat = by_key.setdefault(category_key(name, isthing), {"name": name, "isthing": int(isthing), "label_spaces": []})
        if space not in cat["label_spaces"]:
            cat["label_spaces"].append(space)
    return [{"id": i, "supercategory": "", **by_key[key]} for i, key in enumerate(sorted(by_key), start=1)]


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
        tmp = target.with_name(f".{target.name}.tmp")
        if image.exif_orientation == 1:
            tmp.write_bytes(data)
        else:
            PILImage.fromarray(decode_image(data)).save(tmp, format="PNG")
        tmp.replace(target)


def coco_instances(images: Sequence[AcceptedImage], defined: Sequence[tuple[str, str, bool]] = ()
                   ) -> dict[str, Any]:
    """COCO instances dict; image ids are the database ids, file names those of `image_file_name`."""
    categories = _categories(images, defined)
    cat_ids = {category_key(c["name"], c["isthing"]): c["id"] for c in categories}
    coco_images, annotations = [], []
    for image in images:
        coco_images.append({"id": image.image_id, "file_name": image_file_name(image), "sha256": image.sha256,
                            "original_name": image.original_name, "width": image.width, "height": image.height})
        for seg in image.segments:
            annotations.append(annotation_entry(len(annotations) + 1, image.image_id,
                                                cat_ids[category_key(seg.class_name, seg.isthing)], seg.rle,
                                                seg.iscrowd, label_space=seg.label_space))
    return {"info": {"description": "RESI accepted annotations"}, "images": coco_images,
            "annotations": annotations, "categories": categories}


def _panoptic(images: Sequence[AcceptedImage], space: str, cat_ids: dict[tuple[str, bool], int], png_dir: Path,
              policy: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[GivenUp]]:
    png_dir.mkdir(parents=True, exist_ok=True)
    coco_images, annotations, given_up = [], [], []
    for image in images:
        segs = [s for s in image.segments if space in label_spaces_of(s.label_space)]
        if not segs:
            continue
        masks = [Mask(s.rle, cat_ids[category_key(s.class_name, s.isthing)], s.isthing, s.iscrowd, s.id)
                 for s in segs]
        ids, infos, lost = paint(masks, image.height, image.width, policy)
        names = {s.id: s.class_name for s in segs}
        given_up += [GivenUp(space, image.image_id, g.key, names[g.key], g.pixels, g.whole) for g in lost]
        name = f"{image.sha256}.png"
        write_png(png_dir / name, ids)
        coco_images.append({"id": image.image_id, "file_name": image_file_name(image), "width": image.width,
                            "height": image.height})
        annotations.append({"image_id": image.image_id, "file_name": name, "segments_info": infos})
    return coco_images, annotations, given_up


def export_coco(session: Session, project_id: int, out_dir: Path, store: FileStore | None = None,
                policy: str = DEFAULT_POLICY) -> ExportSummary:
    """Write the project's accepted annotations as COCO instances and per-label-space panoptic; with
    `store`, the image files too (under images/). `policy` resolves overlaps inside one label space."""
    images = accepted_annotations(session, project_id)
    counts = status_counts(session, project_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    if store is not None:
        write_images(images, store, out_dir / "images")
    defined = [(space.name, c["name"], bool(c["isthing"])) for space in list_label_spaces(session, project_id)
               for c in space.classes]
    instances = coco_instances(images, defined)
    instances_path = out_dir / "instances.json"
    write_json(instances_path, instances, indent=None)
    summary = ExportSummary(instances_path, len(images), len(instances["annotations"]), policy=policy,
                            n_not_accepted=sum(n for s, n in counts.items() if s != ImageStatus.ACCEPTED))
    summary.panoptic, summary.given_up = write_panoptic(images, instances["categories"], out_dir / "panoptic", policy)
    return summary


def write_panoptic(images: Sequence[AcceptedImage], categories: Sequence[dict[str, Any]], out_dir: Path,
                   policy: str = DEFAULT_POLICY) -> tuple[dict[str, Path], list[GivenUp]]:
    """One COCO panoptic set per label space under `out_dir` (`<space>.json` + `<space>/`), with the
    instances file's `categories`; every pixel given up to the overlap policy is also listed in
    `overlaps.json`. Returns {space: JSON path} and what was given up."""
    cat_ids = {category_key(c["name"], c["isthing"]): c["id"] for c in categories}
    spaces = sorted({space for image in images for seg in image.segments for space in label_spaces_of(seg.label_space)})
    paths: dict[str, Path] = {}
    given_up: list[GivenUp] = []
    for space in spaces:
        folder = path_safe(space)
        coco_images, annotations, lost = _panoptic(images, space, cat_ids, out_dir / folder, policy)
        paths[space] = out_dir / f"{folder}.json"
        write_json(paths[space], {"images": coco_images, "annotations": annotations,
                                  "categories": [c for c in categories if space in c["label_spaces"]]}, indent=None)
        given_up += lost
    if given_up:
        write_json(out_dir / "overlaps.json", {"policy": policy, "given_up": [g.to_json() for g in given_up]})
    return paths, given_up
