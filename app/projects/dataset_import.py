"""Importing a COCO instances or COCO panoptic dataset into the open project, from the Projects tab:
what `python -m train db import` does (storage.importer), with the files uploaded through the browser."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.context import UserState, require_project
from app.services import Services, UserError
from formats.coco import read_json
from formats.errors import FormatError
from storage import repo
from storage.errors import InvalidInput
from storage.importer import import_coco, import_panoptic
from storage.uploads import upload_items


@dataclass(frozen=True)
class ImportResult:
    lines: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # uploaded files not used: (name, why)

    @property
    def message(self) -> str:
        out = [line.replace("warning: ", "Warning: ") for line in self.lines]
        out += [f"Not used: {name} ({why})" for name, why in self.skipped[:10]]
        return "\n\n".join(out)


def _unpack(paths: Sequence[str | Path], folder: Path, max_bytes: int) -> list[tuple[str, str]]:
    """Write the uploaded files (and the members of uploaded zips) into `folder` by their base names."""
    folder.mkdir(parents=True, exist_ok=True)
    skipped = []
    for name, data in upload_items(paths, max_bytes):
        if isinstance(data, str):
            skipped.append((name, data))
        else:
            (folder / Path(name).name).write_bytes(data)
    return skipped


def import_dataset(svc: Services, state: UserState, annotations: str | Path | None,
                   images: Sequence[str | Path] | None, pngs: Sequence[str | Path] | None = None,
                   label_space: str = "", keep_empty: bool = False) -> ImportResult:
    """Import `annotations` (COCO instances, or COCO panoptic when its entries have `segments_info`) with
    the uploaded images (files or zips) and, for panoptic, its PNGs, as accepted annotations of
    `label_space` (default: the JSON's name) in the open project."""
    project_id = require_project(state)
    if not annotations:
        raise UserError("Choose the dataset's JSON file (COCO instances or COCO panoptic).")
    if not images:
        raise UserError("Choose the dataset's images (files, or a zip of them).")
    json_path = Path(annotations)
    try:
        data = read_json(json_path)
    except FormatError as exc:
        raise UserError(str(exc)) from None
    entries = data.get("annotations") if isinstance(data, dict) else None
    panoptic = bool(entries) and isinstance(entries[0], dict) and "segments_info" in entries[0]
    if panoptic and not pngs:
        raise UserError("This is a COCO panoptic file: choose its PNGs too (files, or a zip of them).")
    with tempfile.TemporaryDirectory(prefix="resi-import-", dir=svc.config.data_dir) as tmp:
        skipped = _unpack(images, Path(tmp) / "images", svc.config.max_upload_bytes)
        if panoptic:
            skipped += _unpack(pngs or (), Path(tmp) / "pngs", svc.config.max_upload_bytes)
        options = {"label_space": label_space.strip() or None, "keep_empty": keep_empty}
        try:
            with svc.sessions.begin() as session:
                name = repo.get_project(session, project_id).name
                if panoptic:
                    report = import_panoptic(session, svc.files, name, json_path, Path(tmp) / "pngs",
                                             Path(tmp) / "images", **options)
                else:
                    report = import_coco(session, svc.files, name, json_path, Path(tmp) / "images", **options)
        except InvalidInput as exc:
            raise UserError(f"Nothing was imported: {str(exc).replace(tmp + '/', '')}") from None
    return ImportResult(report.lines(), [s for s in skipped if "not an image" not in s[1]])
