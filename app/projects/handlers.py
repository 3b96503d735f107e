"""Projects: create, open, list, and the overview of one project's images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.context import UserState, require_project
from app.services import Services, UserError
from storage import repo
from storage.models import ImageStatus

PAGE_SIZE = 500
IMAGE_COLUMNS = ["id", "file", "status", "size", "version", "labeling now"]


@dataclass(frozen=True)
class ProjectOverview:
    project_id: int
    name: str
    counts: dict[str, int]
    rows: list[list[Any]]  # id, file name, status, size, version, labeling now

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


def project_overview(svc: Services, state: UserState) -> ProjectOverview:
    project_id = require_project(state)
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
