"""What one request works with: the browser tab's `UserState`, and the `ProjectContext` read for it.

Every feature's handlers start from these. `load_context` reads the project, its class set and its
active model version in one database session, once per request; the helpers below take the context
instead of reading them again.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.render import OVERLAY_ALPHA
from app.services import ModelInfo, Services, UserError
from resi_core.labels import ADHOC_SPACE, LabelSpace
from storage import repo
from storage.errors import Correction
from storage.models import ClassSet


@dataclass(frozen=True)
class UserState:
    """What one browser tab is looking at. `version` is the annotation version its edits start from."""

    project_id: int | None = None
    image_id: int | None = None
    version: int = 0
    selected_id: str | None = None
    # An edit a save conflict rejected, kept until the user saves it anyway or drops it.
    pending: Correction | None = None
    # How the open image is shown. `spaces`: every label space seen on it since it was opened (the
    # "Show label spaces" choices never shrink while it is open); `hidden_spaces`: those the user
    # unticked (a space that gains a segment is shown again); proposals scoring under `min_score`
    # are hidden, not deleted; `click`: the last click on the picture (x, y), to cycle through the
    # segments under one spot. `own_min_score`: the user's threshold while this image's proposals are
    # hidden because the model flagged it as unlike its training data (restored on the next image).
    spaces: tuple[str, ...] = ()
    hidden_spaces: frozenset[str] = frozenset()
    min_score: float = 0.0
    opacity: float = OVERLAY_ALPHA
    click: tuple[int, int] | None = None
    own_min_score: float | None = None

    @property
    def users_min_score(self) -> float:
        """The threshold the user chose (not the one a flagged image's proposals are hidden under)."""
        return self.min_score if self.own_min_score is None else self.own_min_score


def on_image(state: UserState, image_id: int | None) -> UserState:
    """The state for another image of the same project: the user's view preferences (opacity, score
    threshold) stay, the rest starts afresh. (How an image is first shown is decided here.)"""
    return UserState(project_id=state.project_id, image_id=image_id, min_score=state.users_min_score,
                     opacity=state.opacity)


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


def class_set_choice(class_set: ClassSet) -> ClassSetChoice:
    return ClassSetChoice(tuple(class_set.label_spaces), tuple(class_set.adhoc_classes),
                          tuple((a, b) for a, b in class_set.synonyms), class_set.id)


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
class ProjectContext:
    """One project as a request needs it: its class set and the model its proposals use."""

    project_id: int
    name: str
    class_set: ClassSetChoice | None
    # The checkpoint proposals use: the active model version when that is a fine-tuned one (Fine-tune
    # tab, or `train finetune --activate`), else the app's --checkpoint.
    checkpoint: Path
    active_version_id: int | None  # the project's active model version (None before the first proposal)
    active_sha256: str | None


def require_project(state: UserState) -> int:
    if state.project_id is None:
        raise UserError("Open or create a project first (Projects tab).")
    return state.project_id


def require_image(state: UserState) -> int:
    if state.image_id is None:
        raise UserError("Open an image first: pick one in the list, or upload some.")
    return state.image_id


def is_finetuned(training: dict[str, Any] | None) -> bool:
    return "finetune" in (training or {})


def load_context(svc: Services, state: UserState) -> ProjectContext:
    """The open project's context, read in one session."""
    project_id = require_project(state)
    with svc.sessions() as session:
        project = repo.get_project(session, project_id)
        class_set = repo.current_class_set(session, project_id)
        active = repo.active_model_version(session, project_id)
        checkpoint = Path(active.checkpoint_path) if active is not None and is_finetuned(active.training) \
            else svc.model.checkpoint
        return ProjectContext(
            project_id=project_id,
            name=project.name,
            class_set=None if class_set is None else class_set_choice(class_set),
            checkpoint=checkpoint,
            active_version_id=None if active is None else active.id,
            active_sha256=None if active is None else active.checkpoint_sha256,
        )


def trained_spaces(svc: Services, ctx: ProjectContext | None = None) -> list[LabelSpace]:
    """The label spaces of the model the project uses (without a project: the app's checkpoint);
    [] when that checkpoint is missing."""
    checkpoint = ctx.checkpoint if ctx is not None else svc.model.checkpoint
    return list(svc.model.info(checkpoint).label_spaces) if svc.model.exists(checkpoint) else []


def class_options(svc: Services, ctx: ProjectContext) -> list[ClassOption]:
    """Every class of the project's class set, for relabeling and drawing new segments."""
    choice = ctx.class_set
    if choice is None:
        return []
    known = {s.name: s for s in trained_spaces(svc, ctx)}
    options = [ClassOption(c.name, s, c.isthing) for s in choice.label_spaces if s in known for c in known[s].classes]
    options += [ClassOption(name, ADHOC_SPACE) for name in choice.adhoc]
    return options


def find_option(options: Sequence[ClassOption], label: str | None) -> ClassOption:
    for option in options:
        if option.label == label:
            return option
    raise UserError("Pick a class from the class set (set it on the Class set tab first).")


def model_version_id(svc: Services, ctx: ProjectContext, info: ModelInfo) -> int:
    """The project's model version for checkpoint `info`, registered (and made active) on first use."""
    if ctx.active_version_id is not None and ctx.active_sha256 == info.sha256:
        return ctx.active_version_id
    with svc.sessions.begin() as session:  # it locks the project: two first proposals register it once
        return repo.ensure_model_version(
            session, ctx.project_id, f"{info.name}-{info.sha256[:8]}", str(info.path), info.sha256,
            [s.to_json() for s in info.label_spaces], {"text_encoder": info.text_encoder}, active=True,
        ).id


def file_slug(name: str, fallback: str) -> str:
    """An ASCII file name from a project or label space name ("Städte & Leute" → "Stadte-Leute")."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_name).strip("-.")[:60]
    return slug or fallback
