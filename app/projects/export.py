"""Export a project's accepted annotations as COCO instances + per-space panoptic, zipped for download."""

from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from app.context import UserState, file_slug, require_project
from app.services import Services, UserError
from storage import repo
from storage.models import ImageStatus


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the zip to download
    n_images: int
    n_annotations: int
    panoptic_spaces: tuple[str, ...]
    skipped: dict[str, list[str]]  # label space -> names of images left out of its panoptic set
    not_accepted: int

    @property
    def message(self) -> str:
        lines = [f"Exported {self.n_images} accepted image(s) with {self.n_annotations} segment(s): "
                 f"COCO instances (instances.json) and COCO panoptic per label space "
                 f"({', '.join(self.panoptic_spaces) or 'none'})."]
        for space, names in self.skipped.items():
            lines.append(f"Left out of panoptic {space} ({len(names)} image(s) whose {space} segments overlap; "
                         "they are in instances.json): " + ", ".join(names[:20])
                         + (" ..." if len(names) > 20 else ""))
        if self.not_accepted:
            lines.append(f"{self.not_accepted} image(s) not accepted yet are not in the export.")
        return "\n\n".join(lines)


def export_coco(svc: Services, state: UserState) -> ExportResult:
    """Write the project's accepted annotations as COCO instances + per-space panoptic, zipped for download.

    Each export gets its own folder under the data dir's exports/, so two users exporting at once
    never overwrite each other's file.
    """
    from storage.export import export_coco as write_coco

    project_id = require_project(state)
    with svc.sessions() as session:
        project = repo.get_project(session, project_id)
        counts = repo.status_counts(session, project_id)
        accepted = counts.get(ImageStatus.ACCEPTED, 0)
        if not accepted:
            raise UserError("Nothing to export yet: accept at least one image (Label tab, Accept & next).")
        slug = file_slug(project.name, f"project-{project_id}")
        svc.config.export_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=svc.config.export_dir))
        try:
            summary = write_coco(session, project_id, folder / "coco", svc.files)
            skipped = {space: [repo.get_image(session, i).original_name for i in ids]
                       for space, ids in summary.skipped.items()}
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
        skipped=skipped,
        not_accepted=max(sum(counts.values()) - summary.n_images, 0),
    )


# --- 2. upload ---------------------------------------------------------------------------------
