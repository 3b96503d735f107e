"""Which model a project's proposals use: the app's checkpoint or one of its fine-tuned versions."""

from __future__ import annotations

from pathlib import Path

from app.context import UserState, is_finetuned, load_context, model_version_id, require_project
from app.services import Services, UserError
from storage import repo


def model_choices(svc: Services, state: UserState) -> tuple[list[tuple[str, int]], int]:
    """The models a project can use, as (label, model version id; 0 is the app's --checkpoint), and the
    one it uses: the app's checkpoint and every fine-tuned version of the project, newest first."""
    project_id = require_project(state)
    with svc.sessions() as session:
        tuned = [v for v in repo.list_model_versions(session, project_id) if is_finetuned(v.training)]
        active = repo.active_model_version(session, project_id)
    choices = [(f"{svc.model.checkpoint.name} (the app's checkpoint)", 0)]
    choices += [(f"version {v.id}: {v.name} (+ {v.training['finetune'].get('space', '?')})", v.id)
                for v in reversed(tuned)]
    in_use = active.id if active is not None and is_finetuned(active.training) else 0
    return choices, in_use


def use_model(svc: Services, state: UserState, version_id: int | None) -> str:
    """Make a fine-tuned version (or, with 0, the app's checkpoint) the project's active model."""
    project_id = require_project(state)
    if version_id is None:
        raise UserError("Pick a model first.")
    if int(version_id) == 0:
        version_id = model_version_id(svc, load_context(svc, state), svc.model.info())
    else:
        with svc.sessions() as session:
            version = repo.get_model_version(session, int(version_id))
            if version.project_id != project_id or not is_finetuned(version.training):
                raise UserError(f"Model version {version_id} is not a fine-tuned model of this project.")
            checkpoint = Path(version.checkpoint_path)
        svc.model.info(checkpoint)  # a missing or unreadable checkpoint is one message, and nothing changes
    with svc.sessions.begin() as session:
        repo.set_active_model(session, int(version_id))
    return model_summary(svc, state)


def model_summary(svc: Services, state: UserState) -> str:
    """Which model the project's proposals use, and its label spaces (a problem with it, as text)."""
    checkpoint = load_context(svc, state).checkpoint if state.project_id is not None else svc.model.checkpoint
    try:
        info = svc.model.info(checkpoint)
    except UserError as exc:
        return str(exc)
    kind = "a fine-tuned model" if checkpoint != svc.model.checkpoint else "the app's checkpoint"
    return (f"Proposals use **{info.name}** ({kind}); label spaces: "
            + ", ".join(s.name for s in info.label_spaces) + ".")
