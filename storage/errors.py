"""Errors a caller can cause. Each carries one message meant for a person, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class StorageError(Exception):
    """Base of every error storage raises on purpose."""


class NotFound(StorageError):
    """An unknown project, image, model version or class set."""


class InvalidInput(StorageError, ValueError):
    """Input that cannot be stored: not an image, a bad class name, a mask of the wrong size..."""


class Busy(StorageError):
    """Another writer held the database's lock for longer than we wait (SQLite's busy timeout,
    PostgreSQL's lock timeout). Nothing of this transaction was saved; trying again is safe."""

    def __init__(self, message: str = "The database is busy (another save is taking long); nothing was saved. "
                                      "Try again in a moment."):
        super().__init__(message)


@dataclass(frozen=True)
class Correction:
    """One edit as an annotator made it: the segments it replaces and the segments it writes.

    `before` and `after` are lists of segment dicts (`repo.Segment.to_json()` form). Segments in
    `before` are removed from the annotation and segments in `after` are written, by `id`.
    """

    event_type: str
    before: list[dict[str, Any]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)


class Conflict(StorageError):
    """Someone else saved the image since this edit was started (optimistic locking).

    The rejected edit is kept on the error (`correction`) so that the caller can re-apply it on
    top of the newer state with `repo.reapply_correction`, or save it as a new revision.
    """

    def __init__(self, image_id: int, expected_version: int, current_version: int, correction: Correction):
        self.image_id = image_id
        self.expected_version = expected_version
        self.current_version = current_version
        self.correction = correction
        super().__init__(
            f"Image {image_id} was changed by someone else (you edited version {expected_version}, "
            f"it is now at version {current_version}). Your edit was not saved yet: re-apply it on "
            f"the new version or save it as a new revision."
        )
