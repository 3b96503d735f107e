"""Repository functions. Each takes a Session and never commits: the caller owns the transaction.

    with session_factory.begin() as session:
        image, duplicate = repo.add_image(session, store, project.id, data, "cat.jpg")

When a function raises a StorageError it has written nothing: the writes of a correction run
inside a SAVEPOINT that is rolled back on error, so the caller's transaction stays usable.

Write with `sessions.begin()` (storage.db.Sessions): on SQLite its transaction holds the write lock
from its first statement. A function that checks, then writes, also locks the row it depends on
first (`lock_project`, `lock_image`, a conditional UPDATE, `FOR UPDATE`), so that on PostgreSQL two
callers cannot both pass the check either.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import delete, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from formats import names as name_rules
from formats.errors import InvalidName
from formats.names import label_spaces_of, normalize_name
from storage.errors import Conflict, Correction, InvalidInput, NotFound
from storage.files import FileStore, inspect_image
from storage.models import (
    AnnotationEvent,
    AnnotationSegment,
    ClassSet,
    EventType,
    Image,
    ImageStatus,
    Job,
    JobStatus,
    LabelSpaceDef,
    ModelVersion,
    PiqRecord,
    Project,
    Proposal,
    utcnow,
)

MAX_PAGE_SIZE = 500
MAX_JOB_KIND_LEN = 32
FINISHED_JOB_STATUSES = frozenset({JobStatus.DONE, JobStatus.FAILED})
# Event types an annotator's correction may carry; the others have their own functions.
CORRECTION_TYPES = frozenset(
    {EventType.ADD, EventType.ERASE, EventType.RELABEL, EventType.DELETE, EventType.MERGE, EventType.EDIT}
)

RowT = TypeVar("RowT")  # an ORM model class


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# --- segments -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One mask of an annotation or proposal. `rle` is COCO RLE: {"size": [h, w], "counts": str}."""

    id: str
    class_name: str
    label_space: str
    isthing: bool
    rle: dict[str, Any]
    score: float | None = None
    iscrowd: bool = False  # a COCO crowd region (imported datasets keep theirs)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "class_name": self.class_name,
            "label_space": self.label_space,
            "isthing": self.isthing,
            "score": self.score,
            "rle": self.rle,
            "iscrowd": self.iscrowd,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Segment:
        return cls(
            id=str(data["id"]),
            class_name=data["class_name"],
            label_space=data["label_space"],
            isthing=bool(data["isthing"]),
            rle=data["rle"],
            score=data.get("score"),
            iscrowd=bool(data.get("iscrowd", False)),
        )


def check_name(raw: object, what: str = "class name") -> str:
    """formats.names.check_name, its error raised as InvalidInput."""
    try:
        return name_rules.check_name(raw, what)
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def check_class_names(names: Sequence[object], what: str = "class name", allow_empty: bool = False) -> list[str]:
    """formats.names.check_class_names, its error raised as InvalidInput."""
    try:
        return name_rules.check_class_names(names, what, allow_empty)
    except InvalidName as exc:
        raise InvalidInput(str(exc)) from None


def new_segment_id() -> str:
    return uuid.uuid4().hex


def _check_segment(raw: Segment | dict[str, Any], height: int, width: int, assign_id: bool = False) -> dict[str, Any]:
    """Validate one segment against its image; return its JSON form with `counts` as str."""
    data = raw.to_json() if isinstance(raw, Segment) else dict(raw)
    if assign_id and not data.get("id"):
        data["id"] = new_segment_id()
    seg_id = data.get("id")
    if not isinstance(seg_id, str) or not seg_id or len(seg_id) > 64:
        raise InvalidInput("Every segment needs an id: a non-empty string of at most 64 characters.")
    data["class_name"] = check_name(data.get("class_name"), "class name")
    data["label_space"] = check_name(data.get("label_space"), "label space name")
    data["isthing"] = bool(data.get("isthing", True))
    data["iscrowd"] = bool(data.get("iscrowd", False))
    score = data.get("score")
    if score is not None:
        score = float(score)
        if not 0.0 <= score <= 1.0:
            raise InvalidInput(f"Segment {seg_id}: score {score} is not in [0, 1].")
    data["score"] = score
    rle = data.get("rle")
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise InvalidInput(f"Segment {seg_id}: the mask must be COCO RLE, a dict with 'size' and 'counts'.")
    size = list(rle["size"]) if isinstance(rle["size"], list | tuple) else None
    if size != [height, width]:
        raise InvalidInput(
            f"Segment {seg_id}: the mask is {rle['size']} (h, w) but the image is [{height}, {width}]."
        )
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise InvalidInput(f"Segment {seg_id}: RLE counts must be the compressed string form.")
    data["rle"] = {"size": size, "counts": counts}
    return {k: data[k] for k in ("id", "class_name", "label_space", "isthing", "score", "rle", "iscrowd")}


def _row_to_json(row: AnnotationSegment | Any) -> dict[str, Any]:
    return {
        "id": row.uid,
        "class_name": row.class_name,
        "label_space": row.label_space,
        "isthing": row.isthing,
        "score": row.score,
        "iscrowd": row.iscrowd,
        "rle": json.loads(row.rle),
    }


# --- projects and class sets -----------------------------------------------------------------


def create_project(session: Session, name: str) -> Project:
    name = check_name(name, "project name")
    taken = InvalidInput(f"A project named {name!r} exists already.")
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise taken
    project = Project(name=name)
    try:  # someone creating the same name at the same moment (PostgreSQL) hits the unique constraint
        with session.begin_nested():
            session.add(project)
            session.flush()
    except IntegrityError:
        raise taken from None
    return project


def _get(session: Session, model: type[RowT], row_id: int, what: str) -> RowT:
    row = session.get(model, row_id)
    if row is None:
        raise NotFound(f"There is no {what} with id {row_id}.")
    return row


def get_project(session: Session, project_id: int) -> Project:
    return _get(session, Project, project_id, "project")


def _lock_row(session: Session, id_column: Any, same_column: Any, row_id: int, what: str) -> None:
    """A no-op UPDATE of one row (`same_column` set to itself): it takes SQLite's write lock, or the
    row's lock on PostgreSQL, until the transaction ends."""
    locked = session.execute(update(id_column.class_).where(id_column == row_id).values({same_column: same_column})
                             .execution_options(synchronize_session=False))
    if locked.rowcount == 0:
        raise NotFound(f"There is no {what} with id {row_id}.")


def lock_project(session: Session, project_id: int) -> None:
    """Make this transaction the project's only writer until it ends. Call it first, before any read: a
    read-then-write transaction in SQLite's WAL mode fails with "database is locked" if another one
    committed in between. For read-check-write steps: uploads and class-set saves."""
    _lock_row(session, Project.id, Project.name, project_id, "project")


def lock_image(session: Session, image_id: int) -> None:
    """lock_project for one image's row: steps that read the image's history before they save."""
    _lock_row(session, Image.id, Image.version, image_id, "image")


def get_project_by_name(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == " ".join(name.split())))
    if project is None:
        raise NotFound(f"There is no project named {name!r}.")
    return project


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name)))


def set_class_set(
    session: Session,
    project_id: int,
    label_spaces: Sequence[str],
    adhoc_classes: Sequence[str] = (),
    synonyms: Sequence[tuple[str, str]] = (),
) -> ClassSet:
    """Write the project's new current class set: trained label spaces, ad-hoc classes, synonyms."""
    get_project(session, project_id)
    spaces = check_class_names(label_spaces, "label space name", allow_empty=True)
    adhoc = check_class_names(adhoc_classes, "class name", allow_empty=True)
    if not spaces and not adhoc:
        raise InvalidInput("The class set is empty: choose a label space or type at least one class name.")
    pairs: list[list[str]] = []
    for pair in synonyms:
        if len(pair) != 2:
            raise InvalidInput(f"A synonym is a pair of class names, not {pair!r}.")
        a, b = check_name(pair[0]), check_name(pair[1])
        if normalize_name(a) == normalize_name(b):
            raise InvalidInput(f"The synonym pair {a!r} = {b!r} names one class twice.")
        pairs.append([a, b])
    class_set = ClassSet(project_id=project_id, label_spaces=spaces, adhoc_classes=adhoc, synonyms=pairs)
    session.add(class_set)
    session.flush()
    return class_set


def current_class_set(session: Session, project_id: int) -> ClassSet | None:
    get_project(session, project_id)
    return session.scalar(
        select(ClassSet).where(ClassSet.project_id == project_id).order_by(ClassSet.id.desc()).limit(1)
    )


# --- label-space definitions -------------------------------------------------------------------


def save_label_space(session: Session, project_id: int, name: str, classes: Sequence[dict[str, Any]],
                     source: dict[str, Any] | None = None) -> LabelSpaceDef:
    """Create or extend a project's label space: `classes` ([{"name", "isthing"}]) are added after the
    ones it has. A class it has already must keep its kind (thing or stuff); InvalidInput otherwise."""
    get_project(session, project_id)
    name = check_name(name, "label space name")
    row = session.scalar(select(LabelSpaceDef).where(LabelSpaceDef.project_id == project_id,
                                                     LabelSpaceDef.name == name))
    known = list(row.classes) if row is not None else []
    by_key = {normalize_name(c["name"]): c for c in known}
    check_class_names([c.get("name") for c in classes], allow_empty=True)
    for cls in classes:
        entry = {"name": check_name(cls["name"]), "isthing": bool(cls.get("isthing", True))}
        old = by_key.get(normalize_name(entry["name"]))
        if old is None:
            known.append(entry)
            by_key[normalize_name(entry["name"])] = entry
        elif old["isthing"] != entry["isthing"]:
            kind = {True: "a thing", False: "stuff"}
            raise InvalidInput(f"Class {entry['name']!r} is {kind[old['isthing']]} in label space {name!r}, "
                               f"not {kind[entry['isthing']]}.")
    if row is None:
        row = LabelSpaceDef(project_id=project_id, name=name, classes=known, source=source or {})
        session.add(row)
    else:
        row.classes = known
        if source:
            row.source = {**row.source, **source}
    session.flush()
    return row


def list_label_spaces(session: Session, project_id: int) -> list[LabelSpaceDef]:
    """The project's label-space definitions, oldest first."""
    get_project(session, project_id)
    return list(session.scalars(select(LabelSpaceDef).where(LabelSpaceDef.project_id == project_id)
                                .order_by(LabelSpaceDef.id)))


# --- images ----------------------------------------------------------------------------------


def add_image(
    session: Session, store: FileStore, project_id: int, data: bytes, original_name: str
) -> tuple[Image, bool]:
    """Validate and store an image; return (image, was_duplicate).

    The same bytes uploaded twice to a project give one row and one file. The file is written
    (atomically) before the row; a rolled-back transaction leaves at most an unreferenced file.
    Two uploads into one project take turns (lock_project), so the duplicate check cannot race.
    """
    lock_project(session, project_id)
    original_name = (original_name or "").strip()[:255] or "unnamed"
    sha256 = hashlib.sha256(data).hexdigest()
    existing = session.scalar(select(Image).where(Image.project_id == project_id, Image.sha256 == sha256))
    if existing is not None:  # checked when it was added; a re-import need not decode it again
        return existing, True
    info = inspect_image(data)
    store.put(data, info.sha256)
    image = Image(
        project_id=project_id,
        sha256=info.sha256,
        byte_size=info.byte_size,
        original_name=original_name,
        format=info.format,
        width=info.width,
        height=info.height,
        exif_orientation=info.exif_orientation,
        status=ImageStatus.NEW,
        version=0,
    )
    session.add(image)
    session.flush()
    return image, False


def get_image(session: Session, image_id: int) -> Image:
    return _get(session, Image, image_id, "image")


def list_images(
    session: Session,
    project_id: int,
    status: ImageStatus | str | None = None,
    page: int = 1,
    page_size: int = 50,
) -> list[Image]:
    """One page (1-based) of a project's images in upload order, optionally of one status."""
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"Pages start at 1 and hold 1 to {MAX_PAGE_SIZE} images.")
    get_project(session, project_id)
    query = select(Image).where(Image.project_id == project_id)
    if status is not None:
        query = query.where(Image.status == _status(status))
    query = query.order_by(Image.id).offset((page - 1) * page_size).limit(page_size)
    return list(session.scalars(query))


def delete_image(session: Session, image_id: int, expected_version: int, user: str | None = None,
                 claim_seconds: float | None = None) -> str:
    """Delete an image with its annotation, history, proposals and PIQ records (the database cascades).
    Refused when the annotation changed since `expected_version` (the deleting user has not seen it)
    or, with `user`, while another user's claim on it is live. One conditional DELETE, so nothing can
    slip in between the check and the delete. Returns the image's original name. The file stays in
    the store (other projects may hold the same bytes); `db prune-files` removes files no image uses."""
    cutoff = utcnow() - timedelta(seconds=_claim_seconds(claim_seconds))
    free = or_(Image.claimed_by.is_(None), Image.claimed_by == user, Image.claimed_at < cutoff)
    deleted = session.execute(delete(Image)
                              .where(Image.id == image_id, Image.version == expected_version,
                                     free if user is not None else true())
                              .returning(Image.original_name)
                              .execution_options(synchronize_session=False)).first()
    if deleted is not None:
        return deleted.original_name
    image = get_image(session, image_id)  # NotFound when it is gone already
    if image.version != expected_version:
        raise InvalidInput(f"Image {image_id} was changed (version {image.version}) after you opened version "
                           f"{expected_version}: reload it and look before deleting it.")
    raise InvalidInput(f"{image.claimed_by} is labeling image {image_id} right now; it was not deleted.")


def image_ids(session: Session, project_id: int, statuses: Iterable[ImageStatus | str] | None = None) -> list[int]:
    """Ids of all a project's images (optionally of some statuses) in upload order: no page limit."""
    get_project(session, project_id)
    query = select(Image.id).where(Image.project_id == project_id)
    if statuses is not None:
        query = query.where(Image.status.in_([_status(s) for s in statuses]))
    return list(session.scalars(query.order_by(Image.id)))


# A claim (who is labeling an image) lapses this long after the user last opened or edited the image,
# unless the caller passes its own `claim_seconds` (the app's --claim-minutes).
CLAIM_SECONDS = 15 * 60


def _claim_seconds(value: float | None) -> float:
    if value is None:
        return CLAIM_SECONDS
    if not value > 0:
        raise InvalidInput(f"A claim must last a positive time, not {value} seconds.")
    return float(value)


def claim_image(session: Session, image_id: int, user: str, claim_seconds: float | None = None) -> str | None:
    """Record that `user` is labeling the image now, and release their claim on any other image of
    the project (one image at a time). If another user's claim on it is still live, nothing changes
    and that user's name is returned; otherwise None. The annotation's version is not touched."""
    user = check_name(user, "user name")
    now = utcnow()
    # One conditional UPDATE: two users opening the same free image at once cannot both get it.
    taken = session.execute(
        update(Image)
        .where(Image.id == image_id, or_(Image.claimed_by.is_(None), Image.claimed_by == user,
                                         Image.claimed_at < now - timedelta(seconds=_claim_seconds(claim_seconds))))
        .values(claimed_by=user, claimed_at=now)
        .execution_options(synchronize_session=False)
    )
    image = get_image(session, image_id)
    if not taken.rowcount:
        session.refresh(image)
        return image.claimed_by
    session.execute(update(Image).where(Image.project_id == image.project_id, Image.claimed_by == user,
                                        Image.id != image_id).values(claimed_by=None, claimed_at=None)
                    .execution_options(synchronize_session=False))
    session.refresh(image)
    return None


def active_claims(session: Session, project_id: int, now: datetime | None = None,
                  claim_seconds: float | None = None) -> dict[int, str]:
    """{image id: user} of the project's live claims (younger than `claim_seconds`, default CLAIM_SECONDS)."""
    cutoff = (now or utcnow()) - timedelta(seconds=_claim_seconds(claim_seconds))
    rows = session.execute(select(Image.id, Image.claimed_by).where(
        Image.project_id == project_id, Image.claimed_by.is_not(None), Image.claimed_at >= cutoff))
    return {image_id: user for image_id, user in rows}


def status_counts(session: Session, project_id: int) -> dict[ImageStatus, int]:
    get_project(session, project_id)
    rows = session.execute(
        select(Image.status, func.count()).where(Image.project_id == project_id).group_by(Image.status)
    )
    counts = dict.fromkeys(ImageStatus, 0)
    counts.update({ImageStatus(status): n for status, n in rows})
    return counts


def _status(status: ImageStatus | str) -> ImageStatus:
    try:
        return ImageStatus(status)
    except ValueError:
        raise InvalidInput(f"Unknown image status {status!r}; use one of {[s.value for s in ImageStatus]}.") from None


# --- model versions --------------------------------------------------------------------------


def register_model_version(
    session: Session,
    project_id: int,
    name: str,
    checkpoint_path: str,
    checkpoint_sha256: str,
    label_spaces: list[dict[str, Any]],
    training: dict[str, Any] | None = None,
    parent_id: int | None = None,
    active: bool = False,
) -> ModelVersion:
    """Record a checkpoint. `label_spaces`: [{"name", "classes", "lsqe"}, ...] as the checkpoint holds."""
    lock_project(session, project_id)  # the name check and the insert, one at a time
    name = check_name(name, "model version name")
    if session.scalar(select(ModelVersion.id).where(ModelVersion.project_id == project_id,
                                                    ModelVersion.name == name)) is not None:
        raise InvalidInput(f"The project has a model version named {name!r} already.")
    if parent_id is not None:
        get_model_version(session, parent_id)
    check_class_names([space.get("name") for space in label_spaces], "label space name", allow_empty=True)
    version = ModelVersion(
        project_id=project_id,
        name=name,
        checkpoint_path=str(checkpoint_path),
        checkpoint_sha256=checkpoint_sha256,
        parent_id=parent_id,
        label_spaces=label_spaces,
        training=training or {},
        is_active=False,
    )
    session.add(version)
    session.flush()
    if active:
        set_active_model(session, version.id)
    return version


def ensure_model_version(
    session: Session,
    project_id: int,
    name: str,
    checkpoint_path: str,
    checkpoint_sha256: str,
    label_spaces: list[dict[str, Any]],
    training: dict[str, Any] | None = None,
    active: bool = False,
) -> ModelVersion:
    """The project's model version of this checkpoint (found by hash), registered first if there is none
    (active when `active`). Two users' first proposals with a new model register it once."""
    lock_project(session, project_id)
    found = model_version_by_checkpoint(session, project_id, checkpoint_sha256)
    if found is not None:
        return found
    return register_model_version(session, project_id, name, checkpoint_path, checkpoint_sha256, label_spaces,
                                  training, active=active)


def get_model_version(session: Session, model_version_id: int) -> ModelVersion:
    return _get(session, ModelVersion, model_version_id, "model version")


def model_version_by_checkpoint(session: Session, project_id: int, checkpoint_sha256: str) -> ModelVersion | None:
    """The project's (first) model version registered for a checkpoint with this hash, if any."""
    get_project(session, project_id)
    return session.scalars(select(ModelVersion).where(ModelVersion.project_id == project_id,
                                                      ModelVersion.checkpoint_sha256 == checkpoint_sha256)
                           .order_by(ModelVersion.id).limit(1)).first()


def list_model_versions(session: Session, project_id: int) -> list[ModelVersion]:
    get_project(session, project_id)
    return list(session.scalars(select(ModelVersion).where(ModelVersion.project_id == project_id)
                                .order_by(ModelVersion.id)))


def set_active_model(session: Session, model_version_id: int) -> ModelVersion:
    """Make this version the project's one active model."""
    version = get_model_version(session, model_version_id)
    lock_project(session, version.project_id)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.project_id == version.project_id, ModelVersion.id != version.id)
        .values(is_active=False)
    )
    version.is_active = True
    session.flush()
    return version


def active_model_version(session: Session, project_id: int) -> ModelVersion | None:
    get_project(session, project_id)
    return session.scalar(
        select(ModelVersion).where(ModelVersion.project_id == project_id, ModelVersion.is_active.is_(True))
    )


# --- proposals -------------------------------------------------------------------------------


def save_proposal(
    session: Session,
    image_id: int,
    model_version_id: int,
    class_set_id: int,
    segments: Sequence[Segment | dict[str, Any]],
    inference_ms: float,
    user: str = "model",
    unfamiliar: bool = False,
) -> Proposal:
    """Store what a model proposed. A new image's annotation is seeded from it (status proposed).
    `unfamiliar`: the model flagged the image as unlike its training data (see `Proposal.unfamiliar`)."""
    lock_image(session, image_id)
    image = get_image(session, image_id)
    version = get_model_version(session, model_version_id)
    class_set = session.get(ClassSet, class_set_id)
    if class_set is None:
        raise NotFound(f"There is no class set with id {class_set_id}.")
    if version.project_id != image.project_id or class_set.project_id != image.project_id:
        raise InvalidInput("The model version, class set and image belong to different projects.")
    rows = [_check_segment(s, image.height, image.width, assign_id=True) for s in segments]
    _check_unique_ids(rows)
    proposal = Proposal(
        image_id=image_id,
        model_version_id=model_version_id,
        class_set_id=class_set_id,
        segments=_dumps(rows),
        inference_ms=float(inference_ms),
        unfamiliar=bool(unfamiliar),
    )
    session.add(proposal)
    session.flush()
    if image.status == ImageStatus.NEW:
        _apply(session, image_id, image.version, user, EventType.PROPOSE, [], rows, ImageStatus.PROPOSED)
    return proposal


def latest_proposal(session: Session, image_id: int) -> Proposal | None:
    get_image(session, image_id)
    return session.scalar(select(Proposal).where(Proposal.image_id == image_id).order_by(Proposal.id.desc()).limit(1))


def proposal_segments(proposal: Proposal) -> list[Segment]:
    return [Segment.from_json(s) for s in json.loads(proposal.segments)]


# --- annotations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """An image's current annotation. Pass `version` back as `expected_version` when saving."""

    image_id: int
    version: int
    status: ImageStatus
    segments: list[Segment] = field(default_factory=list)


def current_annotation(session: Session, image_id: int) -> Annotation:
    image_row = session.execute(select(Image.version, Image.status).where(Image.id == image_id)).first()
    if image_row is None:
        raise NotFound(f"There is no image with id {image_id}.")
    rows = session.execute(
        select(AnnotationSegment).where(AnnotationSegment.image_id == image_id).order_by(AnnotationSegment.id)
    ).scalars()
    segments = [Segment.from_json(_row_to_json(r)) for r in rows]
    return Annotation(image_id, image_row.version, ImageStatus(image_row.status), segments)


def apply_correction(
    session: Session, image_id: int, expected_version: int, user: str, correction: Correction
) -> int:
    """Save one edit made on version `expected_version`; return the new version.

    Segments of `correction.before` (by id) are replaced by `correction.after`. Raises Conflict
    when the image has moved on since `expected_version`; the error carries the edit.
    """
    event_type = _event_type(correction.event_type)
    if event_type not in CORRECTION_TYPES:
        raise InvalidInput(f"{event_type.value!r} is not a correction; use accept(), undo() or redo().")
    return _apply(session, image_id, expected_version, user, event_type, correction.before, correction.after,
                  ImageStatus.IN_REVIEW, correction=correction)


def reapply_correction(session: Session, image_id: int, correction: Correction, user: str,
                       force: bool = False) -> int:
    """Re-apply an edit rejected by a Conflict on top of the image's current version.

    Without `force` it is applied only when the segments it replaces are unchanged since (an
    edit of other segments merges cleanly); otherwise Conflict is raised again. With `force` it
    is saved as a new revision: its `after` segments replace whatever those ids hold now.
    """
    lock_image(session, image_id)  # it reads the current annotation before it saves
    annotation = current_annotation(session, image_id)
    current = {s.id: s.to_json() for s in annotation.segments}
    before_ids = [str(s["id"] if isinstance(s, dict) else s.id) for s in correction.before]
    unchanged = all(
        sid in current and current[sid] == _as_json(seg) for sid, seg in zip(before_ids, correction.before, strict=True)
    )
    after_ids = {str(s["id"] if isinstance(s, dict) else s.id) for s in correction.after}
    clashes = (after_ids - set(before_ids)) & set(current)
    if not force and (not unchanged or clashes):
        raise Conflict(image_id, annotation.version, annotation.version, correction)
    before = [current[sid] for sid in before_ids if sid in current]
    before += [current[sid] for sid in clashes if sid not in before_ids]
    return _apply(session, image_id, annotation.version, user, _event_type(correction.event_type), before,
                  correction.after, ImageStatus.IN_REVIEW, correction=correction)


def _as_json(seg: Segment | dict[str, Any]) -> dict[str, Any]:
    data = seg.to_json() if isinstance(seg, Segment) else dict(seg)
    rle = dict(data["rle"])
    if isinstance(rle.get("counts"), bytes):
        rle["counts"] = rle["counts"].decode("ascii")
    rle["size"] = list(rle["size"])
    data["rle"] = rle
    data.setdefault("score", None)
    data.setdefault("iscrowd", False)
    return data


def history(session: Session, image_id: int) -> list[AnnotationEvent]:
    """Every saved event of an image, oldest first."""
    get_image(session, image_id)
    return list(session.scalars(select(AnnotationEvent).where(AnnotationEvent.image_id == image_id)
                                .order_by(AnnotationEvent.seq)))


def _undo_redo_stacks(session: Session, image_id: int) -> tuple[list[int], list[int]]:
    """(undoable event ids, redoable event ids), most recent last."""
    rows = session.execute(
        select(AnnotationEvent.id, AnnotationEvent.event_type, AnnotationEvent.target_event_id)
        .where(AnnotationEvent.image_id == image_id)
        .order_by(AnnotationEvent.seq)
    )
    done: list[int] = []
    undone: list[int] = []
    for event_id, event_type, target in rows:
        # Accepting is undoable too: undoing it reopens the image for review without touching its masks.
        if event_type in CORRECTION_TYPES or event_type == EventType.ACCEPT:
            done.append(event_id)
            undone.clear()
        # Undo and redo move the event they name: histories written before acceptances were undoable
        # have an undo that skipped an acceptance, which "the latest one" would get wrong.
        elif event_type == EventType.UNDO and target in done:
            done.remove(target)
            undone.append(target)
        elif event_type == EventType.REDO and target in undone:
            undone.remove(target)
            done.append(target)
    return done, undone


def can_undo_redo(session: Session, image_id: int) -> tuple[bool, bool]:
    get_image(session, image_id)
    # After a correction or an acceptance (every save), there is something to undo and nothing to redo,
    # whatever came before: one row answers, not the whole history (which grows with every edit).
    latest = session.scalar(select(AnnotationEvent.event_type).where(AnnotationEvent.image_id == image_id)
                            .order_by(AnnotationEvent.seq.desc()).limit(1))
    if latest is None:
        return False, False
    if latest in CORRECTION_TYPES or latest == EventType.ACCEPT:
        return True, False
    done, undone = _undo_redo_stacks(session, image_id)
    return bool(done), bool(undone)


def undo(session: Session, image_id: int, expected_version: int, user: str) -> int:
    """Revert the latest correction (or acceptance) not yet undone; return the new version.

    The image gets back the status it had before that event (undoing an edit of an accepted image
    accepts it again; undoing an acceptance straight from "proposed" gives "proposed"). Events saved
    before migration 0004 did not record it: undoing one of them reopens the image for review.
    """
    lock_image(session, image_id)
    done, _ = _undo_redo_stacks(session, image_id)
    if not done:
        raise InvalidInput("There is nothing to undo.")
    target = session.get_one(AnnotationEvent, done[-1])
    status = ImageStatus(target.status_before) if target.status_before else ImageStatus.IN_REVIEW
    return _apply(session, image_id, expected_version, user, EventType.UNDO, json.loads(target.after),
                  json.loads(target.before), status, target_event_id=target.id)


def redo(session: Session, image_id: int, expected_version: int, user: str) -> int:
    """Repeat the latest undone correction; return the new version."""
    lock_image(session, image_id)
    _, undone = _undo_redo_stacks(session, image_id)
    if not undone:
        raise InvalidInput("There is nothing to redo.")
    target = session.get_one(AnnotationEvent, undone[-1])
    status = ImageStatus.ACCEPTED if target.event_type == EventType.ACCEPT else ImageStatus.IN_REVIEW
    return _apply(session, image_id, expected_version, user, EventType.REDO, json.loads(target.before),
                  json.loads(target.after), status, target_event_id=target.id)


def accept(
    session: Session,
    image_id: int,
    expected_version: int,
    user: str,
    piq: float | None = None,
    model_version_id: int | None = None,
    sq: float | None = None,
    rq: float | None = None,
) -> int:
    """Mark the annotation accepted; with `piq`, record the PIQ of the proposal against it."""
    version = _apply(session, image_id, expected_version, user, EventType.ACCEPT, [], [], ImageStatus.ACCEPTED)
    if piq is not None:
        image = get_image(session, image_id)
        record_piq(session, image.project_id, piq, model_version_id=model_version_id, image_id=image_id, sq=sq, rq=rq)
    return version


def _event_type(value: EventType | str) -> EventType:
    try:
        return EventType(value)
    except ValueError:
        raise InvalidInput(f"Unknown correction type {value!r}; use one of {sorted(CORRECTION_TYPES)}.") from None


def _check_unique_ids(rows: Iterable[dict[str, Any]]) -> None:
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise InvalidInput(f"Segment id {row['id']} is given twice.")
        seen.add(row["id"])


def _apply(
    session: Session,
    image_id: int,
    expected_version: int,
    user: str,
    event_type: EventType,
    before: Sequence[Segment | dict[str, Any]],
    after: Sequence[Segment | dict[str, Any]],
    new_status: ImageStatus,
    target_event_id: int | None = None,
    correction: Correction | None = None,
) -> int:
    user = check_name(user, "user name")
    with session.begin_nested():
        # The version bump comes first: it takes the write lock (SQLite) or row lock (PostgreSQL)
        # before anything is read, so two concurrent saves serialize here and one sees a conflict.
        # An edit renews the editor's claim; a proposal does not (Propose all pre-labels for everyone).
        claim = {} if event_type == EventType.PROPOSE else {"claimed_by": user, "claimed_at": utcnow()}
        # The status is set by a second UPDATE, so that this one returns the status the event replaces.
        bumped = session.execute(
            update(Image)
            .where(Image.id == image_id, Image.version == expected_version)
            .values(version=Image.version + 1, updated_at=utcnow(), **claim)
            .returning(Image.version, Image.width, Image.height, Image.status)
            .execution_options(synchronize_session=False)
        ).first()
        if bumped is None:
            current = session.scalar(select(Image.version).where(Image.id == image_id))
            if current is None:
                raise NotFound(f"There is no image with id {image_id}.")
            raise Conflict(image_id, expected_version, current,
                           correction or Correction(event_type.value, list(before), list(after)))
        new_version, width, height, status_before = bumped
        if status_before != new_status:
            session.execute(update(Image).where(Image.id == image_id).values(status=new_status)
                            .execution_options(synchronize_session=False))
        before_ids = [str(s.id if isinstance(s, Segment) else s.get("id")) for s in before]
        after_rows = [_check_segment(s, height, width) for s in after]
        _check_unique_ids(after_rows)
        if len(set(before_ids)) != len(before_ids):
            raise InvalidInput("A segment is listed twice among the segments an edit replaces.")
        stored = {
            row.uid: row
            for row in session.scalars(
                select(AnnotationSegment).where(AnnotationSegment.image_id == image_id,
                                                AnnotationSegment.uid.in_(before_ids))
            )
        } if before_ids else {}
        missing = [sid for sid in before_ids if sid not in stored]
        if missing:
            raise InvalidInput(f"Segment {missing[0]} is not in the image's annotation.")
        new_ids = [r["id"] for r in after_rows if r["id"] not in stored]
        if new_ids and session.scalar(
            select(func.count()).where(AnnotationSegment.image_id == image_id, AnnotationSegment.uid.in_(new_ids))
        ):
            raise InvalidInput("A new segment reuses the id of a segment the image has already.")
        if stored:
            session.execute(
                delete(AnnotationSegment).where(AnnotationSegment.id.in_([r.id for r in stored.values()])),
                execution_options={"synchronize_session": False},
            )
        if after_rows:
            session.execute(
                insert(AnnotationSegment),
                [
                    {
                        "image_id": image_id,
                        "uid": r["id"],
                        "class_name": r["class_name"],
                        "label_space": r["label_space"],
                        "isthing": r["isthing"],
                        "score": r["score"],
                        "rle": _dumps(r["rle"]),
                        "iscrowd": r["iscrowd"],
                    }
                    for r in after_rows
                ],
            )
        session.execute(
            insert(AnnotationEvent).values(
                image_id=image_id,
                seq=new_version,
                event_type=event_type,
                user=user,
                created_at=utcnow(),
                before=_dumps([_row_to_json(stored[sid]) for sid in before_ids]),
                after=_dumps(after_rows),
                status_before=ImageStatus(status_before).value,
                target_event_id=target_event_id,
            )
        )
    # An Image this session already holds is brought up to date (the UPDATEs above bypass it); one it does
    # not hold is not loaded just for that.
    image = session.identity_map.get(Session.identity_key(Image, image_id))
    if image is not None:
        session.refresh(image, ["version", "status", "updated_at"])
    return new_version


# --- PIQ -------------------------------------------------------------------------------------


def record_piq(
    session: Session,
    project_id: int,
    piq: float,
    model_version_id: int | None = None,
    image_id: int | None = None,
    sq: float | None = None,
    rq: float | None = None,
    n_images: int = 1,
) -> PiqRecord:
    """Record the PIQ of a model's proposals against accepted annotations (per image or aggregate)."""
    get_project(session, project_id)
    for name, value in (("PIQ", piq), ("SQ", sq), ("RQ", rq)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise InvalidInput(f"{name} {value} is not in [0, 1].")
    if model_version_id is not None:
        get_model_version(session, model_version_id)
    record = PiqRecord(project_id=project_id, model_version_id=model_version_id, image_id=image_id,
                       piq=float(piq), sq=sq, rq=rq, n_images=n_images)
    session.add(record)
    session.flush()
    return record


def piq_history(session: Session, project_id: int, model_version_id: int | None = None) -> list[PiqRecord]:
    """PIQ records of a project, oldest first, for plotting quality over time."""
    get_project(session, project_id)
    query = select(PiqRecord).where(PiqRecord.project_id == project_id)
    if model_version_id is not None:
        query = query.where(PiqRecord.model_version_id == model_version_id)
    return list(session.scalars(query.order_by(PiqRecord.created_at, PiqRecord.id)))


def accepted_image_piq(session: Session, project_id: int) -> list[PiqRecord]:
    """One PIQ record per image that is accepted now: the one of its latest acceptance, oldest first.
    Records of acceptances that were undone, or superseded by a later one, stay in the history."""
    accepted = select(Image.id).where(Image.project_id == project_id, Image.status == ImageStatus.ACCEPTED)
    latest: dict[int, PiqRecord] = {}
    for record in piq_history(session, project_id):
        if record.image_id is not None:
            latest[record.image_id] = record
    keep = set(session.scalars(accepted))
    return sorted((r for i, r in latest.items() if i in keep), key=lambda r: (r.created_at, r.id))


# --- jobs ------------------------------------------------------------------------------------


def create_job(session: Session, project_id: int, kind: str, args: dict[str, Any] | None = None,
               unique_by: str | None = None) -> Job:
    """Record a queued job of a project; its process then reports through `update_job`.

    With `unique_by` (a key of `args`), it is refused while an unfinished job of the same kind has the
    same value there (compared as names: case and spaces aside), e.g. two fine-tunings of one space."""
    lock_project(session, project_id)  # the check below and the insert, one at a time
    kind = check_name(kind, "job kind")
    if len(kind) > MAX_JOB_KIND_LEN:
        raise InvalidInput(f"The job kind {kind[:20]!r}... is longer than {MAX_JOB_KIND_LEN} characters.")
    if unique_by is not None:
        value = normalize_name(str((args or {}).get(unique_by, "")))
        busy = session.scalars(select(Job).where(Job.project_id == project_id, Job.kind == kind,
                                                 Job.status.not_in(list(FINISHED_JOB_STATUSES)))
                               .order_by(Job.id)).all()
        clash = next((j for j in busy if normalize_name(str(j.args.get(unique_by, ""))) == value), None)
        if clash is not None:
            raise InvalidInput(f"Job {clash.id} ({kind}, {unique_by} {clash.args.get(unique_by)!r}) has not finished "
                               f"yet; wait for it, or pick another {unique_by}.")
    job = Job(project_id=project_id, kind=kind, status=JobStatus.QUEUED, progress=0.0, message="",
              args=dict(args or {}), result={}, pid=None)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job:
    return _get(session, Job, job_id, "job")


def list_jobs(session: Session, project_id: int) -> list[Job]:
    """A project's jobs, newest first."""
    get_project(session, project_id)
    return list(session.scalars(select(Job).where(Job.project_id == project_id).order_by(Job.id.desc())))


def update_job(
    session: Session,
    job_id: int,
    *,
    status: JobStatus | str | None = None,
    progress: float | None = None,
    message: str | None = None,
    result: dict[str, Any] | None = None,
    pid: int | None = None,
) -> Job:
    """Change what is given. A done or failed job is final: changing it raises InvalidInput.

    Finishing sets `finished_at`; finishing as done without a progress sets it to 1.
    """
    # FOR UPDATE (PostgreSQL; SQLite's write transaction holds the lock already): a cancel and the job's
    # own "done" cannot both find the job unfinished.
    job = session.get(Job, job_id, with_for_update=True, populate_existing=True)
    if job is None:
        raise NotFound(f"There is no job with id {job_id}.")
    if job.status in FINISHED_JOB_STATUSES:
        raise InvalidInput(f"Job {job_id} is {job.status.value} already; a finished job does not change.")
    if status is not None:
        try:
            status = JobStatus(status)
        except ValueError:
            raise InvalidInput(f"Unknown job status {status!r}; use one of {[s.value for s in JobStatus]}.") from None
        if status is JobStatus.QUEUED and job.status is not JobStatus.QUEUED:
            raise InvalidInput(f"Job {job_id} has started already; it cannot be queued again.")
    if progress is not None:
        progress = float(progress)
        if not 0.0 <= progress <= 1.0:  # also refuses NaN
            raise InvalidInput(f"Job progress {progress} is not in [0, 1].")
    if pid is not None and (not isinstance(pid, int) or pid <= 0):
        raise InvalidInput(f"A process id is a positive integer, not {pid!r}.")
    now = utcnow()
    if status is not None:
        job.status = status
        if status in FINISHED_JOB_STATUSES:
            job.finished_at = now
            if status is JobStatus.DONE and progress is None:
                progress = 1.0
    if progress is not None:
        job.progress = progress
    if message is not None:
        job.message = str(message)
    if result is not None:
        job.result = dict(result)
    if pid is not None:
        job.pid = pid
    job.updated_at = now
    session.flush()
    return job


# --- bulk reads for training and export ------------------------------------------------------


@dataclass(frozen=True)
class AcceptedImage:
    image_id: int
    sha256: str
    original_name: str
    width: int
    height: int
    segments: list[Segment]
    exif_orientation: int = 1  # 1..8; masks are in the oriented frame (width x height)


def accepted_annotations(session: Session, project_id: int) -> list[AcceptedImage]:
    """Every accepted image of a project with its segments, in two queries (for training/export)."""
    get_project(session, project_id)
    accepted = (Image.project_id == project_id) & (Image.status == ImageStatus.ACCEPTED)
    images = session.execute(
        select(Image.id, Image.sha256, Image.original_name, Image.width, Image.height, Image.exif_orientation)
        .where(accepted)
        .order_by(Image.id)
    ).all()
    segments: dict[int, list[Segment]] = {row.id: [] for row in images}
    rows = session.execute(
        select(AnnotationSegment.image_id, AnnotationSegment.uid, AnnotationSegment.class_name,
               AnnotationSegment.label_space, AnnotationSegment.isthing, AnnotationSegment.score,
               AnnotationSegment.rle, AnnotationSegment.iscrowd)
        .join(Image, Image.id == AnnotationSegment.image_id)
        .where(accepted)
        .order_by(AnnotationSegment.image_id, AnnotationSegment.id)
    )
    for r in rows:
        segments[r.image_id].append(Segment(r.uid, r.class_name, r.label_space, r.isthing, json.loads(r.rle), r.score,
                                                  r.iscrowd))
    return [AcceptedImage(r.id, r.sha256, r.original_name, r.width, r.height, segments[r.id], r.exif_orientation)
            for r in images]


def accepted_label_spaces(session: Session, project_id: int) -> dict[str, int]:
    """{label space: number of accepted images with segments of it}, for choosing training data."""
    get_project(session, project_id)
    rows = session.execute(
        select(AnnotationSegment.label_space, AnnotationSegment.image_id).distinct()
        .join(Image, Image.id == AnnotationSegment.image_id)
        .where(Image.project_id == project_id, Image.status == ImageStatus.ACCEPTED)
    )
    images: dict[str, set[int]] = {}
    for joined, image_id in rows:  # a fused segment ("street+adhoc") counts for each of its spaces
        for space in label_spaces_of(joined):
            images.setdefault(space, set()).add(image_id)
    return {space: len(images[space]) for space in sorted(images)}
