"""Projects: create, open, list, and the overview of one project's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.context import UserState, require_project
from app.services import Services, UserError
from storage import repo
from storage.models import ImageStatus

IMAGE_COLUMNS = ["id", "file", "status", "size", "version", "labeling now"]
STATUS_FILTERS = ("all", *(s.value for s in ImageStatus))


@dataclass(frozen=True)
class ProjectOverview:
    project_id: int
    name: str
    counts: dict[str, int]
    rows: list[list[Any]]  # one page: id, file name, status, size, version, labeling now
    sha256: list[str]  # the rows' image hashes (for thumbnails)
    pages: int  # how many pages the status filter has

    @property
    def summary(self) -> str:
        total = sum(self.counts.values())
        parts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in self.counts.items())
        return f"**{self.name}**: {total} images ({parts})"


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


def project_overview(svc: Services, state: UserState, status: str = "all", page: int = 1,
                     page_size: int = repo.MAX_PAGE_SIZE) -> ProjectOverview:
    """The project's counts per status, and one page of its images (of one status, unless "all")."""
    project_id = require_project(state)
    if status not in STATUS_FILTERS:
        raise UserError(f"Show images of status {', '.join(STATUS_FILTERS)}, not {status!r}.")
    with svc.sessions() as session:
        project = repo.get_project(session, project_id)
        counts = {s.value: n for s, n in repo.status_counts(session, project_id).items()}
        claims = repo.active_claims(session, project_id, claim_seconds=svc.config.claim_seconds)
        n_images = sum(counts.values()) if status == "all" else counts.get(status, 0)
        pages = max(1, -(-n_images // page_size))
        images = repo.list_images(session, project_id, None if status == "all" else status,
                                  page=min(max(int(page), 1), pages), page_size=page_size)
        rows = [[i.id, i.original_name, i.status.value, f"{i.width}x{i.height}", i.version,
                 claims.get(i.id, "") if i.status != ImageStatus.ACCEPTED else ""] for i in images]
        return ProjectOverview(project_id, project.name, counts, rows, [i.sha256 for i in images], pages)
