"""Uploading images to a project: single files, many, or zips of images; each file is saved on its own."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from app.context import UserState, require_project
from app.services import Services, UserError
from storage import repo
from storage.errors import InvalidInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
MAX_ZIP_MEMBERS = 5000


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
    project_id = require_project(state)
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
