"""Import a COCO instances or COCO panoptic dataset into a project, as the accepted annotations of
one label space (docs/STORAGE.md, "Import").

- Images are stored like uploads (by content hash): an image already in the project is reused, so
  two datasets over the same photos (COCO instances and COCO panoptic) become two label spaces on
  the same images.
- Each image's segments of that label space are replaced by the file's, and the image is accepted.
  Importing the same file again changes nothing (segments are compared by class, kind, crowd flag
  and mask).
- Categories become the label space's classes (`repo.save_label_space`), with their `isthing`. A
  category no annotation uses is left out with a warning, unless `keep_empty` asks for it.
- A malformed record raises one `InvalidInput` naming it (file, entry and fault): an unknown
  category, an image missing on disk or of another size, a polygon under 3 points, an RLE of the
  wrong size, a panoptic PNG id missing from `segments_info`. The caller's transaction then holds
  nothing of the import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from tqdm import tqdm

from formats.coco import load_ground_truth
from formats.errors import FormatError, InvalidName
from formats.names import SPACE_JOIN, check_class_names, check_name, normalize_name
from formats.panoptic import load_panoptic_json, read_panoptic
from formats.rle import RLE
from storage import repo
from storage.errors import Correction, InvalidInput, NotFound
from storage.files import FileStore
from storage.models import EventType, Image, ImageStatus

IMPORT_USER = "import"


@dataclass(frozen=True)
class Category:
    name: str
    isthing: bool


@dataclass(frozen=True)
class Item:
    """One image of the dataset: where it is named, its file, its size and its (category, RLE, crowd) segments."""

    where: str
    file_name: str
    height: int
    width: int
    segments: list[tuple[int, RLE, bool]]


@dataclass
class ImportReport:
    project: str
    label_space: str
    images: int = 0
    new_images: int = 0  # not in the project before
    changed: int = 0  # images whose segments of the label space were written
    unchanged: int = 0  # already imported as they are
    segments: int = 0
    crowd: int = 0
    classes: list[str] = field(default_factory=list)
    empty_categories: list[str] = field(default_factory=list)  # no annotation uses them
    kept_empty: bool = False

    def lines(self) -> list[str]:
        out = [f"imported {self.images} image(s) into project {self.project!r} as label space {self.label_space!r}: "
               f"{self.new_images} new to the project, {self.changed} written, {self.unchanged} unchanged; "
               f"{self.segments} segment(s) ({self.crowd} crowd), {len(self.classes)} class(es); all accepted"]
        if self.empty_categories:
            names = ", ".join(repr(n) for n in self.empty_categories)
            out.append(f"warning: {len(self.empty_categories)} categor{'y' if len(self.empty_categories) == 1 else 'ies'}"
                       f" without annotations: {names}; "
                       + ("kept as classes (--keep-empty-categories)" if self.kept_empty else
                          "not made classes (pass --keep-empty-categories to keep them)"))
        return out


def _invalid(error: FormatError | InvalidName) -> InvalidInput:
    return InvalidInput(str(error))


def coco_items(instances: Path) -> tuple[dict[int, Category], set[int], list[Item]]:
    """Categories, the ids some annotation uses, and the images of a COCO instances file (validated)."""
    try:
        gt = load_ground_truth(instances)
    except FormatError as exc:
        raise _invalid(exc) from None
    by_image = gt.annotations_by_image()
    categories = {c.id: Category(c.name, c.isthing) for c in gt.categories.values()}
    items = [Item(f"{instances}: image id {im.id} ({im.file_name})", im.file_name, im.height, im.width,
                  [(a.category_id, a.rle, a.iscrowd) for a in by_image[im.id]])
             for im in sorted(gt.images.values(), key=lambda im: im.id)]
    missing_names = [item.where for item in items if not item.file_name]
    if missing_names:
        raise InvalidInput(f"{missing_names[0]}: the image has no file_name")
    return categories, {a.category_id for a in gt.annotations}, items


def panoptic_items(panoptic: Path, png_dir: Path) -> tuple[dict[int, Category], set[int], list[dict], Iterator[Item]]:
    """Categories, the ids some segment uses, the annotated images' entries, and the images as they are
    read (each PNG checked against its `segments_info`, panopticapi's rules)."""
    try:
        data = load_panoptic_json(panoptic)
    except FormatError as exc:
        raise _invalid(exc) from None
    categories = {c["id"]: Category(str(c["name"]), bool(c.get("isthing", 1))) for c in data["categories"]}
    used = {s.get("category_id") for a in data["annotations"] if isinstance(a, Mapping)
            for s in a.get("segments_info", ()) if isinstance(s, Mapping)}
    images = {img["id"]: img for img in data["images"]}
    entries = [images.get(a.get("image_id")) for a in data["annotations"] if isinstance(a, Mapping)]

    def read() -> Iterator[Item]:
        try:
            for item in read_panoptic(data, png_dir, str(panoptic)):
                img = item.image
                yield Item(f"{panoptic}: image id {img['id']} ({img.get('file_name', '')})", str(img.get("file_name", "")),
                           img["height"], img["width"],
                           [(seg["category_id"], rle, bool(seg.get("iscrowd", 0))) for seg, rle in item.segments])
        except FormatError as exc:
            raise _invalid(exc) from None

    return categories, used, [e for e in entries if e is not None], read()


def _segment_id(space: str, sha256: str, index: int) -> str:
    return hashlib.sha1(f"{space}\0{sha256}\0{index}".encode()).hexdigest()[:32]


def _content(segments: Iterable[dict[str, Any]]) -> list[tuple[str, bool, bool, str]]:
    return sorted((normalize_name(s["class_name"]), bool(s["isthing"]), bool(s.get("iscrowd", False)),
                   s["rle"]["counts"]) for s in segments)


def write_accepted(session: Session, store: FileStore, project_id: int, space: str, data: bytes, name: str,
                   segments: Sequence[tuple[str, bool, RLE, bool]], user: str = IMPORT_USER,
                   size: tuple[int, int] | None = None) -> tuple[Image, bool, bool]:
    """Store an image (or find it in the project) and make `segments` ((class, isthing, RLE, iscrowd))
    its accepted annotation of label space `space`; other spaces' segments stay. Returns (image,
    it was in the project already, something was written). `size` (h, w), when given, must be the
    image's upright size."""
    image, duplicate = repo.add_image(session, store, project_id, data, name)
    if size is not None and (image.height, image.width) != tuple(size):
        raise InvalidInput(f"the file is {image.width}x{image.height} (upright), the dataset says {size[1]}x{size[0]}.")
    after = [{"id": _segment_id(space, image.sha256, k), "class_name": cls, "label_space": space,
              "isthing": isthing, "score": None, "rle": rle, "iscrowd": crowd}
             for k, (cls, isthing, rle, crowd) in enumerate(segments)]
    current = repo.current_annotation(session, image.id)
    before = [s.to_json() for s in current.segments if s.label_space == space]
    if _content(before) == _content(after) and current.status == ImageStatus.ACCEPTED:
        return image, duplicate, False
    version = current.version
    if before or after:
        version = repo.apply_correction(session, image.id, version, user, Correction(EventType.EDIT, before, after))
    repo.accept(session, image.id, version, user)
    return image, duplicate, True


def import_dataset(session: Session, store: FileStore, project_name: str, label_space: str,
                   categories: dict[int, Category], used: set[int], items: Iterable[Item], images_dir: Path,
                   *, total: int, keep_empty: bool = False, source: dict[str, Any] | None = None,
                   progress: bool = False) -> ImportReport:
    """Import `items` into project `project_name` (created when missing) as label space `label_space`.
    The caller owns the transaction; on InvalidInput it should roll back."""
    try:
        space = check_name(label_space, "label space name")
    except InvalidName as exc:
        raise _invalid(exc) from None
    if SPACE_JOIN in space:
        raise InvalidInput(f"A label space name cannot hold {SPACE_JOIN!r} (it joins the spaces of fused segments): "
                           f"{space!r}.")
    kept = {cid: c for cid, c in categories.items() if cid in used or keep_empty}
    try:
        check_class_names([c.name for c in kept.values()], "category name", allow_empty=True)
    except InvalidName as exc:
        raise InvalidInput(f"Label space {space!r}: {exc}") from None
    try:
        project = repo.get_project_by_name(session, project_name)
    except NotFound:
        project = repo.create_project(session, project_name)
    report = ImportReport(project.name, space, kept_empty=keep_empty,
                          empty_categories=[c.name for cid, c in categories.items() if cid not in used])
    repo.save_label_space(session, project.id, space,
                          [{"name": c.name, "isthing": c.isthing} for c in kept.values()], source)
    report.classes = [c.name for c in kept.values()]
    for item in tqdm(items, total=total, desc=f"import {space}", unit="img", disable=not progress):
        path = images_dir / item.file_name
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"{item.where}: the image file {path} cannot be read ({exc.strerror or exc}).") from None
        segments = [(kept[cid].name, kept[cid].isthing, rle, crowd) for cid, rle, crowd in item.segments]
        try:
            image, duplicate, changed = write_accepted(session, store, project.id, space, data, item.file_name,
                                                       segments, size=(item.height, item.width))
        except InvalidInput as exc:
            raise InvalidInput(f"{item.where}: {path}: {exc}") from None
        report.images += 1
        report.new_images += not duplicate
        report.segments += len(segments)
        report.crowd += sum(crowd for *_, crowd in segments)
        report.changed += changed
        report.unchanged += not changed
    return report


def import_coco(session: Session, store: FileStore, project_name: str, instances: Path, images_dir: Path,
                label_space: str | None = None, **kwargs: Any) -> ImportReport:
    """Import a COCO instances file (polygons or RLE, crowd kept) with its image folder."""
    categories, used, items = coco_items(instances)
    for item in items:  # every missing file named before anything is written
        if not (images_dir / item.file_name).is_file():
            raise InvalidInput(f"{item.where}: the image file {images_dir / item.file_name} does not exist.")
    return import_dataset(session, store, project_name, label_space or instances.stem, categories, used, items,
                          images_dir, total=len(items), source={"coco": str(instances)}, **kwargs)


def import_panoptic(session: Session, store: FileStore, project_name: str, panoptic: Path, png_dir: Path,
                    images_dir: Path, label_space: str | None = None, **kwargs: Any) -> ImportReport:
    """Import a COCO panoptic JSON with its PNG folder and image folder (void pixels stay unlabeled)."""
    categories, used, entries, items = panoptic_items(panoptic, png_dir)
    for entry in entries:
        name = str(entry.get("file_name", ""))
        if not name or not (images_dir / name).is_file():
            raise InvalidInput(f"{panoptic}: image id {entry['id']} ({name}): the image file {images_dir / name} "
                               "does not exist.")
    return import_dataset(session, store, project_name, label_space or panoptic.stem, categories, used, items,
                          images_dir, total=len(entries), source={"panoptic": str(panoptic)}, **kwargs)
