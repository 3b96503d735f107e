"""Uploading images to a project: single files, many, or zips of images (read by storage/uploads.py, capped);
each file is saved on its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from app.context import UserState, require_project
from app.services import Services, UserError
from storage import repo
from storage.errors import InvalidInput
from storage.uploads import upload_items


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
    project_id = require_project(state)
    if not paths:
        raise UserError("Choose one or more image files, or a zip of images, to upload.")
    report = UploadReport()
    for name, data in upload_items(paths, svc.config.max_upload_bytes):
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
