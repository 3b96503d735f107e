"""The app's steps as plain functions: tests, scripts and the Gradio UI all call these.

Each function takes the Services, plain values and the per-user `UserState`, converts formats, and
calls storage or the predictor. Errors a user can cause raise `UserError` (or a storage/label error,
which the UI shows the same way); edits return an `EditResult` whose message says what happened,
including a save conflict, so that the user's state is never lost with an exception.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.exc import IntegrityError

from app.config import MAX_CLASSES
from app.editing import BrushMode, apply_strokes, merge_masks, stroke_mask
from app.segments import SegmentView, find_segment
from app.services import ModelInfo, Services, UserError, database_url
from formats.rle import decode_rle, encode_mask
from resi_core.labels import (
    ADHOC_SPACE,
    MAX_CLASS_NAME_LEN,
    LabelError,
    LabelSpace,
    adhoc_space,
    check_class_names,
    mix,
    normalize_name,
    space_domain,
)
from storage import repo
from storage.db import DATABASE_URL_ENV
from storage.errors import Conflict, Correction, InvalidInput
from storage.models import ClassSet, EventType, ImageStatus, Job, JobStatus

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MAX_ZIP_MEMBERS = 5000
SYNONYM_THRESHOLD = 0.6
PAGE_SIZE = 500
OPEN_STATUSES = (ImageStatus.NEW, ImageStatus.PROPOSED, ImageStatus.IN_REVIEW)
log = logging.getLogger("resi.app")


# --- per-user state and results ----------------------------------------------------------------


@dataclass(frozen=True)
class UserState:
    """What one browser tab is looking at. `version` is the annotation version its edits start from."""

    project_id: int | None = None
    image_id: int | None = None
    version: int = 0
    selected_id: str | None = None
    # An edit a save conflict rejected, kept until the user saves it anyway or drops it.
    pending: Correction | None = None


@dataclass(frozen=True)
class ClassOption:
    """One class the user can give a segment: its name, the label space it belongs to, isthing."""

    name: str
    label_space: str
    isthing: bool = True

    @property
    def label(self) -> str:
        return f"{self.name} [{self.label_space}]"


@dataclass(frozen=True)
class ImageView:
    image_id: int
    name: str
    status: str
    version: int
    image: np.ndarray  # RGB uint8 HxWx3
    segments: list[SegmentView]
    can_undo: bool
    can_redo: bool
    # Another user who opened or edited this image in the last --claim-minutes (set by open_image).
    other_labeler: str | None = None


@dataclass(frozen=True)
class EditResult:
    state: UserState
    view: ImageView | None
    message: str
    ok: bool = True


def _require_project(state: UserState) -> int:
    if state.project_id is None:
        raise UserError("Open or create a project first (Projects tab).")
    return state.project_id


def _require_image(state: UserState) -> int:
    if state.image_id is None:
        raise UserError("Open an image first: pick one in the list, or upload some.")
    return state.image_id


# --- 1. projects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectOverview:
    project_id: int
    name: str
    counts: dict[str, int]
    rows: list[list[Any]]  # id, file name, status, size, version

    @property
    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in self.counts.items())
        return f"**{self.name}**: {total} images ({parts})"


UNCHECKED = -1  # save_class_set(based_on=UNCHECKED): save without checking what the user started from
IMAGE_COLUMNS = ["id", "file", "status", "size", "version", "labeling now"]


def create_project(svc: Services, name: str) -> UserState:
    with svc.sessions.begin() as session:
        project = repo.create_project(session, name)
        return UserState(project_id=project.id)


def project_names(svc: Services) -> list[str]:
    with svc.sessions() as session:
        return [p.name for p in repo.list_projects(session)]


def open_project(svc: Services, name: str) -> UserState:
    if not name:
        raise UserError("Pick a project to open, or type a name and create one.")
    with svc.sessions() as session:
        return UserState(project_id=repo.get_project_by_name(session, name).id)


def project_overview(svc: Services, state: UserState) -> ProjectOverview:
    project_id = _require_project(state)
    with svc.sessions() as session:
        project = repo.get_project(session, project_id)
        counts = {s.value: n for s, n in repo.status_counts(session, project_id).items()}
        claims = repo.active_claims(session, project_id, claim_seconds=svc.config.claim_seconds)
        rows = []
        page = 1
        while True:
            images = repo.list_images(session, project_id, page=page, page_size=PAGE_SIZE)
            rows += [[i.id, i.original_name, i.status.value, f"{i.width}x{i.height}", i.version,
                      claims.get(i.id, "") if i.status != ImageStatus.ACCEPTED else ""] for i in images]
            if len(images) < PAGE_SIZE:
                break
            page += 1
        return ProjectOverview(project_id, project.name, counts, rows)


# --- export ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the zip to download
    n_images: int
    n_annotations: int
    panoptic_spaces: tuple[str, ...]
    # label space -> (pixels, segments, images): what masks overlapping inside that space gave up
    # to the smaller mask in its panoptic set (listed one by one in panoptic/overlaps.json)
    overlaps: dict[str, tuple[int, int, int]]
    not_accepted: int

    @property
    def message(self) -> str:
        lines = [f"Exported {self.n_images} accepted image(s) with {self.n_annotations} segment(s): "
                 f"COCO instances (instances.json) and COCO panoptic per label space "
                 f"({', '.join(self.panoptic_spaces) or 'none'})."]
        for space, (pixels, segments, images) in self.overlaps.items():
            lines.append(f"Panoptic {space}: segments overlap in {images} image(s); {pixels} shared pixel(s) of "
                         f"{segments} segment(s) went to the smaller mask (listed in panoptic/overlaps.json; "
                         "instances.json keeps every mask whole).")
        if self.not_accepted:
            lines.append(f"{self.not_accepted} image(s) not accepted yet are not in the export.")
        return "\n\n".join(lines)


def _file_slug(name: str, fallback: str) -> str:
    """An ASCII file name from a project name ("Städte & Leute" → "Stadte-Leute")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("-.")[:60]
    return slug or fallback


def export_coco(svc: Services, state: UserState) -> ExportResult:
    """Write the project's accepted annotations as COCO instances + per-space panoptic, zipped for download.

    Each export gets its own folder under the data dir's exports/, so two users exporting at once
    never overwrite each other's file.
    """
    from storage.export import export_coco as write_coco

    project_id = _require_project(state)
    with svc.sessions() as session:
        project = repo.get_project(session, project_id)
        counts = repo.status_counts(session, project_id)
        accepted = counts.get(ImageStatus.ACCEPTED, 0)
        if not accepted:
            raise UserError("Nothing to export yet: accept at least one image (Label tab, Accept & next).")
        slug = _file_slug(project.name, f"project-{project_id}")
        svc.config.export_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=svc.config.export_dir))
        try:
            summary = write_coco(session, project_id, folder / "coco", svc.files)
            zip_path = folder / f"{slug}-coco.zip"
            with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                for file in sorted(p for p in (folder / "coco").rglob("*") if p.is_file()):
                    archive.write(file, file.relative_to(folder / "coco").as_posix())
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        shutil.rmtree(folder / "coco")
    return ExportResult(
        path=zip_path,
        n_images=summary.n_images,
        n_annotations=summary.n_annotations,
        panoptic_spaces=tuple(summary.panoptic),
        overlaps=summary.overlaps(),
        not_accepted=summary.n_not_accepted,
    )


# --- 2. upload ---------------------------------------------------------------------------------


@dataclass
class UploadReport:
    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    first_image_id: int | None = None

    @property
    def message(self) -> str:
        lines = [f"Added {len(self.added)} image(s)."]
        if self.duplicates:
            lines.append(f"{len(self.duplicates)} duplicate(s) skipped (already in the project): "
                         + ", ".join(self.duplicates[:10]) + (" ..." if len(self.duplicates) > 10 else ""))
        for name, why in self.rejected[:20]:
            lines.append(f"Rejected {name}: {why}")
        if len(self.rejected) > 20:
            lines.append(f"... and {len(self.rejected) - 20} more rejected.")
        return "\n\n".join(lines)


def _zip_members(path: Path, max_bytes: int) -> Iterable[tuple[str, bytes | str]]:
    """(name, bytes) per image in a zip, or (name, reason) for a member that is refused."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        yield path.name, "the zip file is damaged."
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if len(members) > MAX_ZIP_MEMBERS:
            yield path.name, f"the zip holds {len(members)} files, more than {MAX_ZIP_MEMBERS}."
            return
        for member in members:
            name = f"{path.name}/{member.filename}"
            if Path(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                yield name, "not an image file name (skipped)."
            elif member.file_size > max_bytes:
                yield name, f"larger than the {max_bytes // 2**20} MB limit."
            else:
                try:
                    data = archive.read(member)
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    yield name, f"cannot be read from the zip (damaged: {exc})."
                    continue
                except (RuntimeError, NotImplementedError) as exc:  # encrypted, or an unsupported compression
                    yield name, f"cannot be read from the zip ({exc})."
                    continue
                yield name, data


def _upload_items(paths: Sequence[str | Path], max_bytes: int) -> Iterable[tuple[str, bytes | str]]:
    for raw in paths:
        path = Path(raw)
        if path.suffix.lower() == ".zip":
            yield from _zip_members(path, max_bytes)
        elif path.stat().st_size > max_bytes:
            yield path.name, f"larger than the {max_bytes // 2**20} MB limit."
        else:
            yield path.name, path.read_bytes()


def _add_image(svc: Services, project_id: int, data: bytes, name: str) -> tuple[int, bool]:
    """(image id, duplicate). Someone uploading the same bytes to the project at the same moment makes
    the insert hit the (project, sha256) unique constraint: the retry then finds their image."""
    for attempt in range(2):
        try:
            with svc.sessions.begin() as session:
                image, duplicate = repo.add_image(session, svc.files, project_id, data, name)
                return image.id, duplicate
        except IntegrityError:
            if attempt:
                raise InvalidInput("could not be saved while another upload of it ran; upload it again.") from None
    raise AssertionError("unreachable")


def upload_images(svc: Services, state: UserState, paths: Sequence[str | Path] | None) -> UploadReport:
    """Store image files and zips of images; every file is saved on its own, so one bad file costs nothing."""
    project_id = _require_project(state)
    if not paths:
        raise UserError("Choose one or more image files, or a zip of images, to upload.")
    report = UploadReport()
    for name, data in _upload_items(paths, svc.config.max_upload_bytes):
        if isinstance(data, str):
            report.rejected.append((name, data))
            continue
        try:
            image_id, duplicate = _add_image(svc, project_id, data, name)
        except InvalidInput as exc:
            report.rejected.append((name, str(exc)))
            continue
        (report.duplicates if duplicate else report.added).append(name)
        if report.first_image_id is None and not duplicate:
            report.first_image_id = image_id
    return report


# --- 3. class set ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassSetChoice:
    label_spaces: tuple[str, ...]
    adhoc: tuple[str, ...]
    synonyms: tuple[tuple[str, str], ...]
    id: int | None = None  # the stored class set's id (None before it is saved)

    @property
    def summary(self) -> str:
        parts = []
        if self.label_spaces:
            parts.append("label spaces: " + ", ".join(self.label_spaces))
        if self.adhoc:
            parts.append(f"{len(self.adhoc)} ad-hoc class(es): " + ", ".join(self.adhoc[:20])
                         + (" ..." if len(self.adhoc) > 20 else ""))
        if self.synonyms:
            parts.append("synonyms: " + ", ".join(f"{a} = {b}" for a, b in self.synonyms))
        return "; ".join(parts) or "no classes"


def parse_class_names(text: str | None) -> list[str]:
    """Comma- or newline-separated names → checked names; an empty text gives []."""
    names = [n for n in (text or "").replace("\n", ",").split(",") if n.strip()]
    if not names:
        return []
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names is more than the {MAX_CLASSES} a class set can hold.")
    return check_class_names(names)


def model_checkpoint(svc: Services, project_id: int | None) -> Path:
    """The checkpoint a project's proposals use: its active model version when that is a fine-tuned one
    (Fine-tune tab, or `train finetune --activate`), else the app's --checkpoint."""
    if project_id is not None:
        with svc.sessions() as session:
            active = repo.active_model_version(session, project_id)
        if active is not None and _is_finetuned(active.training):
            return Path(active.checkpoint_path)
    return svc.model.checkpoint


def _is_finetuned(training: dict[str, Any] | None) -> bool:
    return "finetune" in (training or {})


def trained_spaces(svc: Services, state: UserState | None = None) -> list[LabelSpace]:
    """The label spaces of the model the project uses (without a project: the app's checkpoint);
    [] when that checkpoint is missing."""
    checkpoint = model_checkpoint(svc, state.project_id if state is not None else None)
    return list(svc.model.info(checkpoint).label_spaces) if svc.model.exists(checkpoint) else []


def _chosen_spaces(svc: Services, names: Sequence[str], adhoc: Sequence[str],
                   state: UserState | None = None) -> list[LabelSpace]:
    known = {s.name: s for s in trained_spaces(svc, state)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"The model has no label space {', '.join(unknown)}; it has {', '.join(known) or 'none'}.")
    spaces = [known[n] for n in names]
    return spaces + ([adhoc_space(adhoc)] if adhoc else [])


@dataclass(frozen=True)
class SynonymSuggestion:
    a: str
    space_a: str
    b: str
    space_b: str
    similarity: float

    @property
    def label(self) -> str:
        return f"{self.a} ≈ {self.b} ({self.similarity:.2f})"


def suggest_synonyms(
    svc: Services, label_spaces: Sequence[str], adhoc_text: str | None, threshold: float = SYNONYM_THRESHOLD,
    state: UserState | None = None,
) -> list[SynonymSuggestion]:
    """Classes of different chosen spaces that the text encoder finds alike; the user decides.
    `state` names the project, whose model's label spaces can be chosen."""
    from resi_core.text import suggest_synonyms as text_suggestions

    spaces = _chosen_spaces(svc, label_spaces, parse_class_names(adhoc_text), state)
    if len(spaces) < 2:
        return []
    pairs = text_suggestions(svc.model.text_encoder(), spaces, threshold=threshold)
    return [SynonymSuggestion(*pair) for pair in pairs]


def save_class_set(
    svc: Services,
    state: UserState,
    label_spaces: Sequence[str] | None,
    adhoc_text: str | None,
    confirmed: Sequence[SynonymSuggestion] = (),
    based_on: int | None = UNCHECKED,
) -> ClassSetChoice:
    """Check the choice (empty set, duplicates, unknown synonyms) and store it as the project's class set.

    `based_on` is the id of the class set the user started from (None: the project had none). If
    someone saved another one since, nothing is saved and the message shows theirs. UNCHECKED skips
    this check."""
    project_id = _require_project(state)
    adhoc = parse_class_names(adhoc_text)
    spaces = _chosen_spaces(svc, label_spaces or [], adhoc, state)
    if not spaces:
        raise UserError("The class set is empty: tick a label space or type class names, comma-separated.")
    pairs = tuple((s.a, s.b) for s in confirmed)
    mix(spaces, pairs)  # raises LabelError for a synonym of a class that is not chosen
    with svc.sessions.begin() as session:
        repo.lock_project(session, project_id)  # two saves from the same starting point cannot both pass
        current = repo.current_class_set(session, project_id)
        if based_on != UNCHECKED and (current.id if current else None) != based_on:
            theirs = _choice(current).summary if current else "none"
            raise UserError(f"Someone saved another class set for this project after you opened it ({theirs}). "
                            "Nothing was saved: open the project again to load theirs, then make your change.")
        saved = repo.set_class_set(session, project_id, list(label_spaces or []), adhoc, pairs)
        return ClassSetChoice(tuple(label_spaces or ()), tuple(adhoc), pairs, saved.id)


def _choice(class_set: ClassSet) -> ClassSetChoice:
    return ClassSetChoice(tuple(class_set.label_spaces), tuple(class_set.adhoc_classes),
                          tuple((a, b) for a, b in class_set.synonyms), class_set.id)


def current_class_set(svc: Services, state: UserState) -> ClassSetChoice | None:
    project_id = _require_project(state)
    with svc.sessions() as session:
        class_set = repo.current_class_set(session, project_id)
        return None if class_set is None else _choice(class_set)


def class_options(svc: Services, state: UserState) -> list[ClassOption]:
    """Every class of the project's class set, for relabeling and drawing new segments."""
    choice = current_class_set(svc, state)
    if choice is None:
        return []
    known = {s.name: s for s in trained_spaces(svc, state)}
    options = [ClassOption(c.name, s, c.isthing) for s in choice.label_spaces if s in known for c in known[s].classes]
    options += [ClassOption(name, ADHOC_SPACE) for name in choice.adhoc]
    return options


def find_option(options: Sequence[ClassOption], label: str | None) -> ClassOption:
    for option in options:
        if option.label == label:
            return option
    raise UserError("Pick a class from the class set (set it on the Class set tab first).")


# --- images and their annotation ---------------------------------------------------------------


def to_view(seg: repo.Segment) -> SegmentView:
    return SegmentView(seg.id, seg.class_name, seg.label_space, decode_rle(seg.rle), seg.score, seg.isthing)


def to_storage(seg: SegmentView) -> dict[str, Any]:
    return repo.Segment(seg.id, seg.class_name, seg.label_space, seg.isthing, encode_mask(seg.mask),
                        seg.score).to_json()


def load_image(svc: Services, state: UserState) -> tuple[UserState, ImageView]:
    """The open image with its current annotation; the state's version follows the stored one."""
    image_id = _require_image(state)
    with svc.sessions() as session:
        image = repo.get_image(session, image_id)
        annotation = repo.current_annotation(session, image_id)
        can_undo, can_redo = repo.can_undo_redo(session, image_id)
    view = ImageView(
        image_id=image.id,
        name=image.original_name,
        status=annotation.status.value,
        version=annotation.version,
        image=svc.images.rgb(image.sha256),
        segments=[to_view(s) for s in annotation.segments],
        can_undo=can_undo,
        can_redo=can_redo,
    )
    selected = state.selected_id if any(s.id == state.selected_id for s in view.segments) else None
    return replace(state, version=annotation.version, selected_id=selected), view


def open_image(svc: Services, state: UserState, image_id: int | str, user: str | None = None
               ) -> tuple[UserState, ImageView]:
    """Open an image; with `user`, record that they are labeling it (unless someone else is: then the
    view names that user, and the image opens anyway)."""
    project_id = _require_project(state)
    try:
        image_id = int(image_id)
    except (TypeError, ValueError):
        raise UserError(f"{image_id!r} is not an image id: pick an image from the list.") from None
    with svc.sessions.begin() as session:
        # The claim (a write) comes first: SQLite cannot turn a read transaction into a write one after
        # someone else committed. A refusal below rolls it back.
        holder = repo.claim_image(session, image_id, user, svc.config.claim_seconds) if user is not None else None
        if repo.get_image(session, image_id).project_id != project_id:
            raise UserError(f"Image {image_id} belongs to another project.")
    new_state, view = load_image(svc, UserState(project_id=project_id, image_id=image_id))
    return new_state, replace(view, other_labeler=holder)


def delete_image(svc: Services, state: UserState, user: str, confirmed_image_id: int | None = None) -> EditResult:
    """Delete the open image with its annotation and history, then open the next image to label.
    Refused if someone changed it after this tab loaded it, if someone else is labeling it, or if the
    image asked about (`confirmed_image_id`, from the first click) is no longer the open one."""
    project_id, image_id = _require_project(state), _require_image(state)
    if confirmed_image_id is not None and confirmed_image_id != image_id:
        raise UserError("Another image is open now than when you clicked Delete image…: nothing was deleted. "
                        "Click Delete image… again to delete the open one.")
    with svc.sessions.begin() as session:
        name = repo.delete_image(session, image_id, state.version, user, svc.config.claim_seconds)
    next_id = next_open_image(svc, project_id, None, user)
    message = f"Deleted {name} with its annotation, history and PIQ records."
    if next_id is None:
        return EditResult(UserState(project_id=project_id), None, message)
    new_state, view = open_image(svc, UserState(project_id=project_id), next_id, user)
    return EditResult(new_state, view, f"{message} Opened {view.name}.")


def skip_image(svc: Services, state: UserState, user: str) -> EditResult:
    """Open the next image still to label that nobody else is labeling, leaving this one as it is."""
    project_id = _require_project(state)
    next_id = next_open_image(svc, project_id, state.image_id, user)
    if next_id is None or next_id == state.image_id:
        if state.image_id is None:
            raise UserError("No image is left to label: every image is accepted or being labeled by someone else.")
        new_state, view = load_image(svc, state)
        return EditResult(new_state, view, "No other image is left to label.", ok=False)
    new_state, view = open_image(svc, state, next_id, user)
    return EditResult(new_state, view, f"Skipped to {view.name}.")


def next_open_image(svc: Services, project_id: int, after_id: int | None, user: str | None = None) -> int | None:
    """The next image still to label (new, proposed or in review), after `after_id` and wrapping round;
    with `user`, images that another user is labeling now are skipped."""
    with svc.sessions() as session:
        ids = repo.image_ids(session, project_id, OPEN_STATUSES)
        if user is not None:
            taken = {i for i, holder in repo.active_claims(session, project_id, claim_seconds=svc.config.claim_seconds).items() if holder != user}
            ids = [i for i in ids if i not in taken]
    if not ids:
        return None
    later = [i for i in ids if after_id is None or i > after_id]
    return (later or ids)[0]


# --- 4. propose --------------------------------------------------------------------------------


def _model_version_id(svc: Services, project_id: int, info: ModelInfo) -> int:
    """The project's model version for the loaded checkpoint, registered (and made active) on first use."""
    with svc.register_lock, svc.sessions.begin() as session:
        version = repo.model_version_by_checkpoint(session, project_id, info.sha256)
        if version is not None:
            return version.id
        version = repo.register_model_version(
            session, project_id, f"{info.name}-{info.sha256[:8]}", str(info.path), info.sha256,
            [s.to_json() for s in info.label_spaces], {"text_encoder": info.text_encoder}, active=True,
        )
        return version.id


def predict_segments(predictor: Any, rgb: np.ndarray, choice: ClassSetChoice) -> tuple[list[SegmentView], str]:
    """Run ESF-OMI for the class set: trained spaces and typed names go in one request, so a typed class
    that a trained space also has ("car" and street's "car") is fused into one segment. Returns the
    segments and a note for the user when domain-aware OMI held some label spaces back ("" if not)."""
    from resi_core.predictor import AdHocRequest, MixedRequest, RequestError, SpacesRequest

    missing = [s for s in choice.label_spaces if s not in predictor.label_spaces]
    if missing:
        raise UserError(f"The model in use has no label space {', '.join(map(repr, missing))} (it was learned by "
                        "another model version). Switch the model on the Fine-tune tab, or change the class set.")
    known = {c.name for s in choice.label_spaces for c in predictor.label_spaces[s].classes} | set(choice.adhoc)
    synonyms = tuple((a, b) for a, b in choice.synonyms if a in known and b in known)
    if choice.label_spaces and choice.adhoc:
        request: Any = MixedRequest(choice.label_spaces, choice.adhoc, synonyms)
    elif choice.label_spaces:
        request = SpacesRequest(choice.label_spaces, synonyms)
    else:
        request = AdHocRequest(choice.adhoc)
    try:
        prediction = predictor.predict(rgb, request, with_instances=False)  # the AP list is for evaluation only
    except RequestError as exc:
        raise UserError(str(exc)) from exc
    views = [
        SegmentView(s.id, s.class_name, "+".join(s.label_spaces), np.asarray(s.mask, dtype=bool),
                    float(min(max(s.score, 0.0), 1.0)), s.isthing)
        for s in prediction.segments
    ]
    return views, domain_note(getattr(prediction, "domain_probs", {}), getattr(prediction, "out_of_domain", ()),
                              getattr(predictor, "out_of_domain_threshold", None), choice.label_spaces,
                              getattr(getattr(predictor, "model", None), "space_domains", {}))


def domain_note(domain_probs: dict[str, float], held: Sequence[str], threshold: float | None,
                asked: Sequence[str], inherited: dict[str, str] | None = None) -> str:
    """One sentence on domain-aware OMI for this image, or "" when it held nothing back. `asked`: the
    query sets of the request; the one that kept the normal threshold is named. `inherited`: label
    spaces added by fine-tuning -> the trained space whose images theirs look like."""
    if not held or not domain_probs or threshold is None:
        return ""
    domain_of = {s: space_domain(s, domain_probs, inherited or {}) for s in asked}
    kept = [s for s in asked if domain_of[s] in domain_probs and s not in held]
    likeliest = max(kept, key=lambda s: domain_probs[domain_of[s]], default=None)
    looks = ""
    if likeliest:
        domain = domain_of[likeliest]
        via = "" if domain == likeliest else f", the domain that {likeliest!r} inherited when it was fine-tuned"
        looks = (f"Of the chosen label spaces, this image looks most like {domain!r} training data{via} "
                 f"(p = {domain_probs[domain]:.2f}), so ")
    return (f"{looks}proposals of {', '.join(map(repr, held))} needed a score of at least {threshold:.2f} "
            "(domain-aware proposals; start the app with --no-domain-aware to show them all).")


def propose(svc: Services, state: UserState, user: str) -> EditResult:
    """Ask the model for segments. A new image is seeded with them; an image already being labeled
    gets them as one undoable edit that replaces its segments (e.g. after changing the class set)."""
    project_id, image_id = _require_project(state), _require_image(state)
    choice = current_class_set(svc, state)
    if choice is None:
        raise UserError("Choose a class set first (Class set tab): the model needs to know what to look for.")
    checkpoint = model_checkpoint(svc, project_id)
    info = svc.model.info(checkpoint)
    predictor = svc.model.predictor(checkpoint)
    version_id = _model_version_id(svc, project_id, info)
    with svc.sessions() as session:
        image = repo.get_image(session, image_id)
        class_set_id = repo.current_class_set(session, project_id).id  # type: ignore[union-attr]
        was_accepted = image.status == ImageStatus.ACCEPTED
    start = time.perf_counter()
    segments, note = predict_segments(predictor, svc.images.rgb(image.sha256), choice)
    elapsed_ms = (time.perf_counter() - start) * 1000
    rows = [to_storage(s) for s in segments]
    try:
        with svc.sessions.begin() as session:
            # Read again inside the write: someone may have proposed or edited it while the model ran.
            repo.lock_image(session, image_id)
            seeds = repo.get_image(session, image_id).status == ImageStatus.NEW
            repo.save_proposal(session, image_id, version_id, class_set_id, rows, elapsed_ms, user)
            if not seeds:  # an edit on top of what is there now; a stale state.version is a Conflict
                current = repo.current_annotation(session, image_id)
                repo.apply_correction(session, image_id, state.version, user,
                                      Correction(EventType.EDIT.value, [s.to_json() for s in current.segments], rows))
    except Conflict as exc:
        return _conflict(svc, state, exc)
    new_state, view = load_image(svc, state)
    message = f"Proposed {len(segments)} segment(s) in {elapsed_ms:.0f} ms."
    if was_accepted:
        message += " The image was accepted; it is back in review (Undo restores its segments; accept it again when done)."
    return EditResult(new_state, view, f"{message} {note}" if note else message)


def propose_all(svc: Services, state: UserState, user: str,
                progress: Callable[[int, int], None] | None = None) -> str:
    """Pre-label every new image of the project; one failure is reported and the rest go on."""
    project_id = _require_project(state)
    with svc.sessions() as session:
        ids = repo.image_ids(session, project_id, [ImageStatus.NEW])
    done, failed = 0, []
    for n, image_id in enumerate(ids):
        if progress is not None:
            progress(n, len(ids))
        try:
            propose(svc, UserState(project_id=project_id, image_id=image_id), user)
            done += 1
        except (UserError, InvalidInput, LabelError) as exc:
            if "class set" in str(exc) or "checkpoint" in str(exc):
                raise
            failed.append(f"image {image_id}: {exc}")
    if progress is not None:
        progress(len(ids), len(ids))
    return f"Pre-labeled {done} of {len(ids)} new image(s)." + "".join(f"\n\n{f}" for f in failed)


# --- 5. corrections ----------------------------------------------------------------------------


def _conflict(svc: Services, state: UserState, exc: Conflict) -> EditResult:
    return EditResult(
        replace(state, pending=exc.correction), None,
        f"{exc} Use 'Save mine anyway' to keep your edit as a new revision (theirs stays in the history, "
        "undo brings it back), or 'Reload' to drop yours and see theirs.",
        ok=False,
    )


def save_correction(svc: Services, state: UserState, user: str, correction: Correction, message: str) -> EditResult:
    """Save one edit at once, on top of the version the user was looking at."""
    image_id = _require_image(state)
    try:
        with svc.sessions.begin() as session:
            repo.apply_correction(session, image_id, state.version, user, correction)
    except Conflict as exc:
        return _conflict(svc, state, exc)
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, message)


def save_pending_anyway(svc: Services, state: UserState, user: str) -> EditResult:
    """After a conflict: write the rejected edit as a new revision over the other user's."""
    if state.pending is None:
        raise UserError("There is no unsaved edit to keep.")
    with svc.sessions.begin() as session:
        repo.reapply_correction(session, _require_image(state), state.pending, user, force=True)
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, "Your edit is saved as the newest revision; the other one is in the history.")


def reload_image(svc: Services, state: UserState) -> EditResult:
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, "Reloaded the saved version.")


def _segments(svc: Services, state: UserState) -> list[SegmentView]:
    return load_image(svc, state)[1].segments


def _selected(svc: Services, state: UserState, segment_id: str | None) -> SegmentView:
    if not segment_id:
        raise UserError("Select a segment first: click it in the image or its row in the table.")
    try:
        return find_segment(_segments(svc, state), segment_id)
    except KeyError:
        raise UserError("That segment is no longer in the image (someone removed it?). Reload.") from None


def select_segment(svc: Services, state: UserState, segment_id: str | None) -> UserState:
    seg = _selected(svc, state, segment_id)
    return replace(state, selected_id=seg.id)


def relabel(svc: Services, state: UserState, user: str, segment_id: str | None, option: ClassOption) -> EditResult:
    seg = _selected(svc, state, segment_id)
    new = replace(seg.relabeled(option.name, option.label_space), isthing=option.isthing)
    correction = Correction(EventType.RELABEL.value, [to_storage(seg)], [to_storage(new)])
    return save_correction(svc, state, user, correction, f"Relabeled to {option.label}.")


def delete_segment(svc: Services, state: UserState, user: str, segment_id: str | None) -> EditResult:
    seg = _selected(svc, state, segment_id)
    result = save_correction(svc, state, user, Correction(EventType.DELETE.value, [to_storage(seg)], []),
                             f"Deleted {seg.class_name}.")
    return replace(result, state=replace(result.state, selected_id=None))


def merge_segments(svc: Services, state: UserState, user: str, first_id: str | None, second_id: str | None) -> EditResult:
    """Merge the second segment into the first: the first keeps its id and class."""
    first, second = _selected(svc, state, first_id), _selected(svc, state, second_id)
    if first.id == second.id:
        raise UserError("Pick two different segments to merge.")
    merged = first.with_mask(merge_masks([first.mask, second.mask]))
    correction = Correction(EventType.MERGE.value, [to_storage(first), to_storage(second)], [to_storage(merged)])
    return save_correction(svc, state, user, correction, f"Merged into {first.class_name}.")


def edit_mask(svc: Services, state: UserState, user: str, segment_id: str | None,
              editor_value: dict[str, Any] | None, mode: BrushMode | str) -> EditResult:
    """Add the brush strokes to the selected segment's mask, or erase them from it."""
    seg = _selected(svc, state, segment_id)
    strokes = stroke_mask(editor_value, seg.mask.shape)
    if strokes is None:
        raise UserError("Paint on the image with the brush first, then apply the edit.")
    mode = BrushMode(mode)
    mask = apply_strokes(seg.mask, strokes, mode)
    if not mask.any():
        raise UserError("That would erase the whole segment; use Delete to remove it.")
    event = EventType.EDIT if mode is BrushMode.ADD else EventType.ERASE
    correction = Correction(event.value, [to_storage(seg)], [to_storage(seg.with_mask(mask))])
    return save_correction(svc, state, user, correction, f"Mask of {seg.class_name} updated.")


def add_segment(svc: Services, state: UserState, user: str, editor_value: dict[str, Any] | None,
                option: ClassOption) -> EditResult:
    """A new segment of class `option` from the brush strokes."""
    _, view = load_image(svc, state)
    strokes = stroke_mask(editor_value, view.image.shape[:2])
    if strokes is None:
        raise UserError("Paint the new segment on the image with the brush first.")
    seg = SegmentView(repo.new_segment_id(), option.name, option.label_space, strokes, None, option.isthing)
    result = save_correction(svc, state, user, Correction(EventType.ADD.value, [], [to_storage(seg)]),
                             f"Added a {option.name} segment.")
    return replace(result, state=replace(result.state, selected_id=seg.id)) if result.ok else result


def undo(svc: Services, state: UserState, user: str) -> EditResult:
    return _undo_redo(svc, state, user, repo.undo, "Undone.")


def redo(svc: Services, state: UserState, user: str) -> EditResult:
    return _undo_redo(svc, state, user, repo.redo, "Redone.")


def _undo_redo(svc: Services, state: UserState, user: str, step: Callable[..., int], message: str) -> EditResult:
    image_id = _require_image(state)
    try:
        with svc.sessions.begin() as session:
            repo.lock_image(session, image_id)  # before the read: the transaction writes next
            was = repo.get_image(session, image_id).status
            step(session, image_id, state.version, user)
    except Conflict as exc:
        new_state, view = load_image(svc, state)
        return EditResult(new_state, view, f"{exc} Showing the newest version now.", ok=False)
    new_state, view = load_image(svc, state)
    if was == ImageStatus.ACCEPTED and view.status != ImageStatus.ACCEPTED:
        now = str(view.status).replace("_", " ")
        message = f"Acceptance undone: the image is {now} again and out of exports and training."
    elif view.status == ImageStatus.ACCEPTED and was != ImageStatus.ACCEPTED:
        message = "Accepted again."
    return EditResult(new_state, view, message)


# --- 6. accept ---------------------------------------------------------------------------------


def _piq_parts(segments: Iterable[repo.Segment]) -> list[tuple[np.ndarray, str, bool, float]]:
    return [(decode_rle(s.rle), normalize_name(s.class_name), s.isthing, s.score or 1.0) for s in segments]


@dataclass(frozen=True)
class AcceptResult:
    state: UserState
    message: str
    piq: float | None
    next_image_id: int | None
    ok: bool = True


def accept(svc: Services, state: UserState, user: str) -> AcceptResult:
    """Accept the annotation, record PIQ of the latest proposal against it, and move to the next image."""
    from resi_core.metrics.piq import piq_of_masks

    project_id, image_id = _require_project(state), _require_image(state)
    if state.pending is not None:  # accepting now would silently drop the user's clashing edit
        return AcceptResult(state, "Your last edit clashed with someone else's and is not saved: use 'Save mine "
                            "anyway' or 'Reload' first, then accept.", None, None, ok=False)
    with svc.sessions() as session:
        annotation = repo.current_annotation(session, image_id)
        proposal = repo.latest_proposal(session, image_id)
    score = model_version_id = None
    sq = rq = None
    if proposal is not None:
        result = piq_of_masks(_piq_parts(repo.proposal_segments(proposal)), _piq_parts(annotation.segments))
        score, sq, rq, model_version_id = result.piq, result.sq, result.rq, proposal.model_version_id
    try:
        with svc.sessions.begin() as session:
            repo.accept(session, image_id, state.version, user, piq=score, model_version_id=model_version_id,
                        sq=sq, rq=rq)
    except Conflict as exc:
        return AcceptResult(state, f"{exc} Reload to see the newest version, then accept again.", None, None, ok=False)
    next_id = next_open_image(svc, project_id, image_id, user)
    text = f"Accepted image {image_id}." + (f" PIQ of the proposal: {score:.3f}." if score is not None else "")
    text += " Accepted by mistake? Open it again and Undo."
    if next_id is not None:
        with svc.sessions.begin() as session:
            repo.claim_image(session, next_id, user, svc.config.claim_seconds)
    elif next_open_image(svc, project_id, image_id) is not None:
        text += " The images still open are being labeled by others right now."
    else:
        text += " Every image of the project is accepted."
    return AcceptResult(UserState(project_id=project_id, image_id=next_id), text, score, next_id)


# --- 7. quality --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityReport:
    over_time: list[dict[str, Any]]  # {"time", "piq", "model"} per accepted image
    per_model: list[dict[str, Any]]  # {"model", "mean_piq", "images"}
    unchanged_share: float | None  # proposed segments accepted exactly as proposed
    accepted_images: int

    @property
    def summary(self) -> str:
        if not self.over_time:
            return "No PIQ recorded yet: accept a proposed image to see how good the proposals are."
        mean = sum(r["piq"] for r in self.over_time) / len(self.over_time)
        share = "n/a" if self.unchanged_share is None else f"{self.unchanged_share:.0%}"
        return (f"Mean PIQ {mean:.3f} over {len(self.over_time)} accepted image(s); "
                f"{share} of proposed segments were accepted unchanged.")


def quality(svc: Services, state: UserState) -> QualityReport:
    project_id = _require_project(state)
    with svc.sessions() as session:
        names = {v.id: v.name for v in repo.list_model_versions(session, project_id)}
        records = repo.accepted_image_piq(session, project_id)
        accepted = repo.accepted_annotations(session, project_id)
        proposals = {a.image_id: repo.latest_proposal(session, a.image_id) for a in accepted}
    over_time = [{"time": r.created_at, "piq": r.piq, "model": names.get(r.model_version_id, "unknown")}
                 for r in records]
    per_model: dict[str, list[float]] = {}
    for row in over_time:
        per_model.setdefault(row["model"], []).append(row["piq"])
    proposed = kept = 0
    for item in accepted:
        proposal = proposals[item.image_id]
        if proposal is None:
            continue
        final = {s.id: s for s in item.segments}
        for seg in repo.proposal_segments(proposal):
            proposed += 1
            kept += final.get(seg.id) == seg
    return QualityReport(
        over_time=over_time,
        per_model=[{"model": m, "mean_piq": sum(v) / len(v), "images": len(v)} for m, v in per_model.items()],
        unchanged_share=kept / proposed if proposed else None,
        accepted_images=len(accepted),
    )


# --- 8. fine-tuning a new label space -----------------------------------------------------------

FINETUNE_KIND = "finetune"
DEFAULT_FINETUNE_ITERATIONS = 300
MAX_FINETUNE_ITERATIONS = 100_000
# A queued job that no process has claimed after this long never started (the app stopped in between).
JOB_START_TIMEOUT_S = 120
# `python -m train ...` runs from here: the app starts jobs as commands and never imports train/.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
JOB_COLUMNS = ["job", "label space", "status", "progress", "message", "started (UTC)", "finished (UTC)"]


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    status: str  # queued, running, done, failed
    progress: float  # 0..1
    message: str
    args: dict[str, Any]
    result: dict[str, Any]
    pid: int | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED)

    @property
    def space(self) -> str:
        return str(self.args.get("space", ""))

    @property
    def row(self) -> list[Any]:
        return [self.id, self.space, self.status, f"{self.progress:.0%}", self.message, _when(self.created_at),
                _when(self.finished_at)]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite gives naive UTC times


def _when(moment: datetime | None) -> str:
    return "" if moment is None else _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _job_view(job: Job) -> JobView:
    return JobView(job.id, job.kind, JobStatus(job.status).value, job.progress, job.message, dict(job.args),
                   dict(job.result), job.pid, job.created_at, job.finished_at)


def finetune_sources(svc: Services, state: UserState) -> list[tuple[str, str]]:
    """(label, label space) of the segments a new space can learn from: the spaces of accepted
    segments with their image counts, the ad-hoc classes first (always listed: the default)."""
    project_id = _require_project(state)
    with svc.sessions() as session:
        counts = repo.accepted_label_spaces(session, project_id)
    counts.setdefault(ADHOC_SPACE, 0)
    order = sorted(counts, key=lambda space: (space != ADHOC_SPACE, space))
    return [(f"{space} ({counts[space]} accepted image(s))", space) for space in order]


def _iterations(value: float | int | str | None) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not (number.is_integer() and 1 <= number <= MAX_FINETUNE_ITERATIONS):
        raise UserError(f"Iterations must be a whole number from 1 to {MAX_FINETUNE_ITERATIONS}.")
    return int(number)


def _new_space_name(raw: str | None, trained: Sequence[str]) -> str:
    name = " ".join((raw or "").split())
    if not name:
        raise UserError("Name the new label space first (e.g. 'hydrants').")
    if len(name) > MAX_CLASS_NAME_LEN:
        raise UserError(f"A label space name has at most {MAX_CLASS_NAME_LEN} characters.")
    if "+" in name:
        raise UserError("A label space name cannot contain '+': it joins the spaces of a fused segment.")
    if any(ch in name for ch in "/\\") or name.startswith("."):
        raise UserError("A label space name cannot contain '/' or '\\' or start with '.': it names files.")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise UserError("A label space name cannot contain control characters.")
    if normalize_name(name) == ADHOC_SPACE:
        raise UserError(f"{ADHOC_SPACE!r} names the typed ad-hoc classes; pick another name for the new space.")
    taken = next((t for t in trained if normalize_name(t) == normalize_name(name)), None)
    if taken is not None:
        raise UserError(f"The model in use has a label space {taken!r} already; pick a new name.")
    return name


def _job_folder(svc: Services, space: str, job_id: int) -> Path:
    """A new DATA_DIR/models/<space>-job<id>-<timestamp> path (nothing is created). The job id keeps two
    names with the same ASCII slug (汽车, 火车 → "space") from sharing a folder."""
    models = svc.config.data_dir.resolve() / "models"
    stem = f"{_file_slug(space, 'space')}-job{job_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = models / stem, 2
    while out.exists() or _job_log(out).exists():
        out, n = models / f"{stem}-{n}", n + 1
    return out


def _job_log(out: Path) -> Path:
    # Beside the checkpoint folder, not in it: a model version is named by the hash of its folder's files.
    return out.parent / f"{out.name}.log"


def _job_device(device: str) -> str:
    return device if device in ("auto", "cpu", "cuda") else "cuda" if device.startswith("cuda") else "auto"


def start_finetune(svc: Services, state: UserState, space: str | None, from_space: str | None,
                   iterations: float | int | str | None = DEFAULT_FINETUNE_ITERATIONS) -> JobView:
    """Learn a new label space from the project's accepted segments of `from_space`, in the background.

    Records a queued job, then starts `python -m train finetune ... --job-id N --register --activate`
    detached; the job writes its progress to its row, and when done its model is the project's active
    one (`list_jobs` shows it; proposals switch to it on their own).
    """
    project_id = _require_project(state)
    n_iterations = _iterations(iterations)
    source = " ".join((from_space or "").split()) or ADHOC_SPACE
    with svc.sessions() as session:
        project_name = repo.get_project(session, project_id).name
        n_images = repo.accepted_label_spaces(session, project_id).get(source, 0)
    if not n_images:
        raise UserError(f"No accepted image has segments of label space {source!r} yet: label and accept some "
                        "images first (Label tab), or pick other segments to learn from.")
    checkpoint = model_checkpoint(svc, project_id)
    info = svc.model.info(checkpoint)  # a missing or unreadable checkpoint is one message
    name = _new_space_name(space, [s.name for s in info.label_spaces])
    with svc.register_lock, svc.sessions.begin() as session:  # two clicks never start the same space twice
        busy = next((j for j in repo.list_jobs(session, project_id) if j.kind == FINETUNE_KIND
                     and j.status not in repo.FINISHED_JOB_STATUSES
                     and normalize_name(str(j.args.get("space", ""))) == normalize_name(name)), None)
        if busy is not None:
            raise UserError(f"Job {busy.id} is learning label space {busy.args['space']!r} already; wait for it, "
                            "or pick another name.")
        job = repo.create_job(session, project_id, FINETUNE_KIND, {})
        out = _job_folder(svc, name, job.id)
        # --flag=value: a name that starts with '-' stays a value.
        command = [
            sys.executable, "-m", "train", "finetune", f"--checkpoint={Path(info.path).resolve()}",
            f"--space={name}", f"--project={project_name}", f"--from-space={source}",
            f"--data-dir={svc.config.data_dir.resolve()}", f"--iterations={n_iterations}", f"--out={out}",
            "--register", "--activate", f"--job-id={job.id}", "--no-progress",
            f"--device={_job_device(svc.config.device)}",
        ]
        job.args = {"space": name, "from_space": source, "iterations": n_iterations, "images": n_images,
                    "checkpoint": str(Path(info.path).resolve()), "out": str(out), "log": str(_job_log(out)),
                    "host": socket.gethostname(), "command": command}
        job_id = job.id
    # The database URL goes by environment, so a password never shows in the process list.
    env = {**os.environ, DATABASE_URL_ENV: database_url(svc.config)}
    try:
        svc.jobs.start(job_id, command, PROJECT_ROOT, env, _job_log(out))
    except OSError as exc:
        with svc.sessions.begin() as session:
            repo.update_job(session, job_id, status=JobStatus.FAILED, message=f"The job could not start: {exc}")
        raise UserError(f"The fine-tuning job could not start: {exc}.") from exc
    with svc.sessions() as session:
        return _job_view(repo.get_job(session, job_id))


def _log_tail(log: str | None) -> str:
    """The last line a job's process wrote (its error, usually)."""
    if not log:
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - 4096, 0))
            lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return (last.removeprefix("error: ")[:300]).strip()


def _check_process(svc: Services, job: JobView) -> None:
    """Mark an unfinished job failed when its process is gone (killed, out of memory, or it died before
    it could report); a job that could report has done so before it exited."""
    # A pid means something only on the machine that started the job (apps may share a PostgreSQL database).
    pid = job.pid if job.args.get("host") == socket.gethostname() else None
    process = svc.jobs.state(job.id, pid)
    if process is None:
        age = (datetime.now(UTC) - _utc(job.created_at)).total_seconds()
        if job.status != JobStatus.QUEUED or age < JOB_START_TIMEOUT_S:
            return
        reason = "never started"
    elif process.alive:
        return
    elif process.returncode is not None and process.returncode < 0:
        reason = f"was stopped by signal {-process.returncode}"
    elif process.returncode is not None:
        reason = f"ended with exit code {process.returncode}"
    else:
        reason = "ended"
    tail = _log_tail(job.args.get("log"))
    message = f"The job's process {reason} without finishing" + (f": {tail}" if tail else ".")
    try:
        with svc.sessions.begin() as session:
            if repo.get_job(session, job.id).status not in repo.FINISHED_JOB_STATUSES:
                repo.update_job(session, job.id, status=JobStatus.FAILED, message=message)
    except InvalidInput:  # it finished in between
        pass


def list_jobs(svc: Services, state: UserState) -> list[JobView]:
    """The project's jobs, newest first; an unfinished one whose process is gone is marked failed first."""
    project_id = _require_project(state)
    svc.jobs.reap()
    with svc.sessions() as session:
        jobs = [_job_view(j) for j in repo.list_jobs(session, project_id)]
    unfinished = [j for j in jobs if not j.finished]
    for job in unfinished:
        _check_process(svc, job)
    if unfinished:
        with svc.sessions() as session:
            jobs = [_job_view(j) for j in repo.list_jobs(session, project_id)]
    return jobs


@dataclass(frozen=True)
class JobsReport:
    jobs: list[JobView]  # newest first
    finished_now: list[JobView]  # jobs that were watched (unfinished before) and are done or failed now

    @property
    def unfinished(self) -> tuple[int, ...]:
        return tuple(j.id for j in self.jobs if not j.finished)

    @property
    def current(self) -> JobView | None:
        """The job to show: the newest unfinished one, else the newest."""
        return next((j for j in self.jobs if not j.finished), self.jobs[0] if self.jobs else None)


def jobs_report(svc: Services, state: UserState, watched: Sequence[int] = ()) -> JobsReport:
    jobs = list_jobs(svc, state)
    ids = set(watched)
    return JobsReport(jobs, [j for j in jobs if j.id in ids and j.finished])


def cancel_job(svc: Services, state: UserState) -> JobView:
    """Stop the project's running fine-tuning job: it is marked failed ("cancelled") first, so a job that
    ends in between cannot register a half-finished model, then its process group gets SIGTERM."""
    job = next((j for j in list_jobs(svc, state) if not j.finished), None)
    if job is None:
        raise UserError("No fine-tuning job of this project is running.")
    host = job.args.get("host")
    if host != socket.gethostname():
        raise UserError(f"Job {job.id} runs on host {host!r}; cancel it from the app on that machine.")
    try:
        with svc.sessions.begin() as session:
            repo.update_job(session, job.id, status=JobStatus.FAILED, message="Cancelled by the user.")
    except InvalidInput:  # it finished in between: nothing to cancel
        raise UserError(f"Job {job.id} finished before it could be cancelled.") from None
    svc.jobs.stop(job.id, job.pid)
    with svc.sessions() as session:
        return _job_view(repo.get_job(session, job.id))


def model_choices(svc: Services, state: UserState) -> tuple[list[tuple[str, int]], int]:
    """The models a project can use, as (label, model version id; 0 is the app's --checkpoint), and the
    one it uses: the app's checkpoint and every fine-tuned version of the project, newest first."""
    project_id = _require_project(state)
    with svc.sessions() as session:
        tuned = [v for v in repo.list_model_versions(session, project_id) if _is_finetuned(v.training)]
        active = repo.active_model_version(session, project_id)
    choices = [(f"{svc.model.checkpoint.name} (the app's checkpoint)", 0)]
    choices += [(f"version {v.id}: {v.name} (+ {v.training['finetune'].get('space', '?')})", v.id)
                for v in reversed(tuned)]
    in_use = active.id if active is not None and _is_finetuned(active.training) else 0
    return choices, in_use


def use_model(svc: Services, state: UserState, version_id: int | None) -> str:
    """Make a fine-tuned version (or, with 0, the app's checkpoint) the project's active model."""
    project_id = _require_project(state)
    if version_id is None:
        raise UserError("Pick a model first.")
    if int(version_id) == 0:
        version_id = _model_version_id(svc, project_id, svc.model.info())
    else:
        with svc.sessions() as session:
            version = repo.get_model_version(session, int(version_id))
            if version.project_id != project_id or not _is_finetuned(version.training):
                raise UserError(f"Model version {version_id} is not a fine-tuned model of this project.")
            checkpoint = Path(version.checkpoint_path)
        svc.model.info(checkpoint)  # a missing or unreadable checkpoint is one message, and nothing changes
    with svc.sessions.begin() as session:
        repo.set_active_model(session, int(version_id))
    return model_summary(svc, state)


def model_summary(svc: Services, state: UserState) -> str:
    """Which model the project's proposals use, and its label spaces (a problem with it, as text)."""
    checkpoint = model_checkpoint(svc, state.project_id)
    try:
        info = svc.model.info(checkpoint)
    except UserError as exc:
        return str(exc)
    kind = "a fine-tuned model" if checkpoint != svc.model.checkpoint else "the app's checkpoint"
    return (f"Proposals use **{info.name}** ({kind}); label spaces: "
            + ", ".join(s.name for s in info.label_spaces) + ".")
