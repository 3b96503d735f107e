"""ORM models (SQLAlchemy 2 typed declarative). The schema itself is created by the alembic
migrations in `storage/migrations`; a test checks that these models and the migrated schema agree.

Masks are stored as COCO RLE JSON text (`{"size": [h, w], "counts": str}`), never as pixels.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAME_LEN = 100

# Stable constraint names so that migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ImageStatus(enum.StrEnum):
    NEW = "new"
    PROPOSED = "proposed"
    IN_REVIEW = "in_review"
    ACCEPTED = "accepted"


class JobStatus(enum.StrEnum):
    QUEUED = "queued"  # written, its process not started yet
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class EventType(enum.StrEnum):
    PROPOSE = "propose"  # the annotation was seeded from a model proposal
    ADD = "add"
    ERASE = "erase"
    RELABEL = "relabel"
    DELETE = "delete"
    MERGE = "merge"
    EDIT = "edit"  # any other change of masks (e.g. a brush stroke that grows a mask)
    ACCEPT = "accept"
    UNDO = "undo"
    REDO = "redo"


def _enum(cls: type[enum.StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable and readable in SQL.
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda e: [m.value for m in e])


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    class_sets: Mapped[list[ClassSet]] = relationship(back_populates="project", order_by="ClassSet.id")


class ClassSet(Base):
    """The classes a project asks the model for: trained label spaces plus ad-hoc classes.

    Class sets are immutable once written, so a proposal always points at the set it used;
    `set_class_set` writes a new one and the newest is the project's current class set.
    """

    __tablename__ = "class_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    label_spaces: Mapped[list[str]] = mapped_column(JSON)
    adhoc_classes: Mapped[list[str]] = mapped_column(JSON)
    synonyms: Mapped[list[list[str]]] = mapped_column(JSON)  # [[name, synonym], ...]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    project: Mapped[Project] = relationship(back_populates="class_sets")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    checkpoint_path: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    # [{"name": space, "classes": [{"name", "isthing", "synonyms"}], "lsqe": {...}}, ...]
    label_spaces: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # How and on what it was trained: command, config, dataset names, accepted image ids, metrics.
    training: Mapped[dict[str, Any]] = mapped_column(JSON)
    is_active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Image(Base):
    """An image of a project. The pixels live in the file store under `sha256`."""

    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256"),
        Index("ix_images_project_status_id", "project_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    byte_size: Mapped[int] = mapped_column(Integer)
    original_name: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(16))
    # Size after EXIF orientation is applied: masks are stored in this frame.
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    exif_orientation: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[ImageStatus] = mapped_column(_enum(ImageStatus, "image_status"), default=ImageStatus.NEW)
    # Optimistic lock: every change of the annotation increments it (see repo.apply_correction).
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Who is labeling the image now (set when a user opens or edits it; see repo.claim_image). A claim
    # older than repo.CLAIM_SECONDS has lapsed. Not part of the annotation: it does not bump `version`.
    claimed_by: Mapped[str | None] = mapped_column(String(100), nullable=True, default=None)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, default=None)


class Proposal(Base):
    """What a model version proposed for an image under a class set."""

    __tablename__ = "proposals"

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), index=True)
    class_set_id: Mapped[int] = mapped_column(ForeignKey("class_sets.id", ondelete="CASCADE"))
    # JSON text of [{"id", "class_name", "label_space", "score", "isthing", "rle"}, ...]
    segments: Mapped[str] = mapped_column(Text)
    inference_ms: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The model's familiarity check flagged the image as unlike its training data (0006): the app opens
    # such an image with these proposals hidden under the score threshold.
    unfamiliar: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class AnnotationSegment(Base):
    """One segment of an image's current annotation (derived state, kept beside the events)."""

    __tablename__ = "annotation_segments"
    __table_args__ = (UniqueConstraint("image_id", "uid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    uid: Mapped[str] = mapped_column(String(64))  # stable id, survives relabel and erase
    class_name: Mapped[str] = mapped_column(String(NAME_LEN))
    label_space: Mapped[str] = mapped_column(String(NAME_LEN))
    isthing: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    rle: Mapped[str] = mapped_column(Text)  # COCO RLE JSON text
    # A COCO crowd region (a group of objects labeled as one); imported datasets keep theirs (0005).
    iscrowd: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class LabelSpaceDef(Base):
    """A label space's classes as a project defines them (an imported dataset's categories, with
    isthing). Segments name their label space and class; this keeps the order, the kind of each
    class and the classes no segment uses yet (kept only when an import was asked to)."""

    __tablename__ = "label_spaces"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    classes: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # [{"name", "isthing"}, ...]
    source: Mapped[dict[str, Any]] = mapped_column(JSON)  # where it came from: {"coco": path} etc.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AnnotationEvent(Base):
    """Append-only history: one row per saved change. `seq` is the image version it produced."""

    __tablename__ = "annotation_events"
    __table_args__ = (UniqueConstraint("image_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[EventType] = mapped_column(_enum(EventType, "event_type"))
    user: Mapped[str] = mapped_column(String(NAME_LEN))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    before: Mapped[str] = mapped_column(Text)  # JSON text: segments removed by this event
    after: Mapped[str] = mapped_column(Text)  # JSON text: segments written by this event
    # The image status this event replaced (ImageStatus value), so undoing it restores that status
    # (an undone edit of an accepted image is accepted again). NULL for events older than migration 0004.
    status_before: Mapped[str | None] = mapped_column(String(16), nullable=True, default=None)
    # For undo/redo: the event whose change this one reverts or repeats.
    target_event_id: Mapped[int | None] = mapped_column(ForeignKey("annotation_events.id", ondelete="SET NULL"))


class PiqRecord(Base):
    """PIQ of what a model version proposed against what a person accepted.

    `image_id` set: one accepted image. `image_id` NULL: an aggregate over the project.
    """

    __tablename__ = "piq_records"
    __table_args__ = (Index("ix_piq_records_project_created", "project_id", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    piq: Mapped[float] = mapped_column(Float)
    sq: Mapped[float | None] = mapped_column(Float)
    rq: Mapped[float | None] = mapped_column(Float)
    n_images: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """A long job (fine-tuning, bulk pre-labeling) run as a `python -m train ...` subprocess.

    The process writes its own progress here, so the UI shows it by reading this row and a crash
    of the job never touches the app. `args` is what it was started with; `result` what it made
    (e.g. {"checkpoint": path, "model_version_id": id}).
    """

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_project_id_id", "project_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.QUEUED)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    message: Mapped[str] = mapped_column(Text, default="")
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any]] = mapped_column(JSON)
    pid: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
