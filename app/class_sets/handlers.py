"""Class sets: which trained label spaces and typed (ad-hoc) classes a project labels, and their synonyms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.config import MAX_CLASSES
from app.context import (
    ClassSetChoice,
    ProjectContext,
    UserState,
    class_set_choice,
    load_context,
    require_project,
    trained_spaces,
)
from app.services import Services, UserError
from resi_core.labels import LabelSpace, adhoc_space, check_class_names, mix
from storage import repo

SYNONYM_THRESHOLD = 0.6
UNCHECKED = -1  # save_class_set(based_on=UNCHECKED): save without checking what the user started from


def parse_class_names(text: str | None) -> list[str]:
    """Comma- or newline-separated names → checked names; an empty text gives []."""
    names = [n for n in (text or "").replace("\n", ",").split(",") if n.strip()]
    if not names:
        return []
    if len(names) > MAX_CLASSES:
        raise UserError(f"{len(names)} class names is more than the {MAX_CLASSES} a class set can hold.")
    return check_class_names(names)


def _chosen_spaces(svc: Services, names: Sequence[str], adhoc: Sequence[str],
                   ctx: ProjectContext | None) -> list[LabelSpace]:
    known = {s.name: s for s in trained_spaces(svc, ctx)}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"The model has no label space {', '.join(unknown)}; it has {', '.join(known) or 'none'}.")
    spaces = [known[n] for n in names]
    return spaces + ([adhoc_space(adhoc)] if adhoc else [])


@dataclass(frozen=True)
class SynonymSuggestion:
    a: str
    space_a: str
    b: str
    space_b: str
    similarity: float

    @property
    def label(self) -> str:
        return f"{self.a} ≈ {self.b} ({self.similarity:.2f})"


def suggest_synonyms(
    svc: Services, label_spaces: Sequence[str], adhoc_text: str | None, threshold: float = SYNONYM_THRESHOLD,
    state: UserState | None = None,
) -> list[SynonymSuggestion]:
    """Classes of different chosen spaces that the text encoder finds alike; the user decides.
    `state` names the project, whose model's label spaces can be chosen."""
    from resi_core.text import suggest_synonyms as text_suggestions

    ctx = load_context(svc, state) if state is not None and state.project_id is not None else None
    spaces = _chosen_spaces(svc, label_spaces, parse_class_names(adhoc_text), ctx)
    if len(spaces) < 2:
        return []
    pairs = text_suggestions(svc.model.text_encoder(), spaces, threshold=threshold)
    return [SynonymSuggestion(*pair) for pair in pairs]


def save_class_set(
    svc: Services,
    state: UserState,
    label_spaces: Sequence[str] | None,
    adhoc_text: str | None,
    confirmed: Sequence[SynonymSuggestion] = (),
    based_on: int | None = UNCHECKED,
) -> ClassSetChoice:
    """Check the choice (empty set, duplicates, unknown synonyms) and store it as the project's class set.

    `based_on` is the id of the class set the user started from (None: the project had none). If
    someone saved another one since, nothing is saved and the message shows theirs. UNCHECKED skips
    this check."""
    project_id = require_project(state)
    adhoc = parse_class_names(adhoc_text)
    spaces = _chosen_spaces(svc, label_spaces or [], adhoc, load_context(svc, state))
    if not spaces:
        raise UserError("The class set is empty: tick a label space or type class names, comma-separated.")
    pairs = tuple((s.a, s.b) for s in confirmed)
    mix(spaces, pairs)  # raises LabelError for a synonym of a class that is not chosen
    with svc.sessions.begin() as session:
        repo.lock_project(session, project_id)  # two saves from the same starting point cannot both pass
        current = repo.current_class_set(session, project_id)
        if based_on != UNCHECKED and (current.id if current else None) != based_on:
            theirs = class_set_choice(current).summary if current else "none"
            raise UserError(f"Someone saved another class set for this project after you opened it ({theirs}). "
                            "Nothing was saved: open the project again to load theirs, then make your change.")
        saved = repo.set_class_set(session, project_id, list(label_spaces or []), adhoc, pairs)
        return ClassSetChoice(tuple(label_spaces or ()), tuple(adhoc), pairs, saved.id)


def current_class_set(svc: Services, state: UserState) -> ClassSetChoice | None:
    return load_context(svc, state).class_set
