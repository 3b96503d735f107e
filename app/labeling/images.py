"""The open image: load it with its annotation, open one, go to the next, skip, delete."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.context import UserState, on_image, require_image, require_project
from app.segments import SegmentView
from app.services import MaskCache, Services, UserError
from formats.rle import encode_mask
from storage import repo
from storage.models import ImageStatus

OPEN_STATUSES = (ImageStatus.NEW, ImageStatus.PROPOSED, ImageStatus.IN_REVIEW)
# The score threshold an image the familiarity check flags starts at: every proposal is hidden (calibrated
# scores stay below 1), kept in storage, and shown again by moving the "Hide proposals scoring below"
# slider down.
UNFAMILIAR_MIN_SCORE = 1.0
UNFAMILIAR_HIDDEN = "(They are under 'Hide proposals scoring below'; move it down to see them.)"


@dataclass(frozen=True)
class ImageView:
    image_id: int
    name: str
    status: str
    version: int
    image: np.ndarray  # RGB uint8 HxWx3
    segments: list[SegmentView]
    can_undo: bool
    can_redo: bool
    # Another user who opened or edited this image in the last --claim-minutes (set by open_image).
    other_labeler: str | None = None
    # What open_image tells the user first (a background proposal the model was unsure of).
    notice: str = ""


@dataclass(frozen=True)
class EditResult:
    state: UserState
    view: ImageView | None
    message: str
    ok: bool = True


def visible_segments(segments: list[SegmentView], state: UserState) -> list[SegmentView]:
    """The segments the Label tab shows: those of a label space the user has not hidden (a fused segment
    shows while any of its spaces does) that score at least the threshold. A drawn segment (no score)
    and the selected one always show."""
    return [s for s in segments
            if s.id == state.selected_id
            or (set(s.label_space.split("+")) - state.hidden_spaces and (s.score is None or s.score >= state.min_score))]


def to_view(seg: repo.Segment, masks: MaskCache) -> SegmentView:
    """The segment with its mask decoded (once: `masks` keeps it, read-only, for the next event)."""
    return SegmentView(seg.id, seg.class_name, seg.label_space, masks.mask(seg.rle), seg.score, seg.isthing)


def to_storage(seg: SegmentView) -> dict[str, Any]:
    return repo.Segment(seg.id, seg.class_name, seg.label_space, seg.isthing, encode_mask(seg.mask),
                        seg.score).to_json()


def load_image(svc: Services, state: UserState) -> tuple[UserState, ImageView]:
    """The open image with its current annotation; the state's version follows the stored one."""
    image_id = require_image(state)
    with svc.sessions() as session:
        image = repo.get_image(session, image_id)
        annotation = repo.current_annotation(session, image_id)
        can_undo, can_redo = repo.can_undo_redo(session, image_id)
    view = ImageView(
        image_id=image.id,
        name=image.original_name,
        status=annotation.status.value,
        version=annotation.version,
        image=svc.images.rgb(image.sha256),
        segments=[to_view(s, svc.masks) for s in annotation.segments],
        can_undo=can_undo,
        can_redo=can_redo,
    )
    selected = state.selected_id if any(s.id == state.selected_id for s in view.segments) else None
    spaces = sorted(set(state.spaces).union(*(s.label_space.split("+") for s in view.segments)))
    return replace(state, version=annotation.version, selected_id=selected, spaces=tuple(spaces)), view


def open_image(svc: Services, state: UserState, image_id: int | str, user: str | None = None
               ) -> tuple[UserState, ImageView]:
    """Open an image; with `user`, record that they are labeling it (unless someone else is: then the
    view names that user, and the image opens anyway)."""
    project_id = require_project(state)
    try:
        image_id = int(image_id)
    except (TypeError, ValueError):
        raise UserError(f"{image_id!r} is not an image id: pick an image from the list.") from None
    with svc.sessions.begin() as session:
        # The claim (a write) comes first: SQLite cannot turn a read transaction into a write one after
        # someone else committed. A refusal below rolls it back.
        holder = repo.claim_image(session, image_id, user, svc.config.claim_seconds) if user is not None else None
        if repo.get_image(session, image_id).project_id != project_id:
            raise UserError(f"Image {image_id} belongs to another project.")
    new_state, notice = first_look(svc, on_image(state, image_id))
    new_state, view = load_image(svc, new_state)
    return new_state, replace(view, other_labeler=holder, notice=notice)


def first_look(svc: Services, state: UserState) -> tuple[UserState, str]:
    """How an image just opened starts, and what to tell the user first: an image still as the model
    proposed it (by `train prelabel`, say) that the model flagged as unlike its training data starts with
    its proposals hidden under the score threshold, as the Propose button leaves them."""
    if state.image_id is None:
        return state, ""
    with svc.sessions() as session:
        image = repo.get_image(session, state.image_id)
        proposal = repo.latest_proposal(session, state.image_id) if image.status == ImageStatus.PROPOSED else None
        flagged = proposal is not None and proposal.unfamiliar and bool(repo.proposal_segments(proposal))
    if not flagged:
        return state, ""
    from resi_core.predictor import UNFAMILIAR_NOTICE  # (torch loads with the model, not with the app)

    return hide_proposals(state), UNFAMILIAR_NOTICE


def hide_proposals(state: UserState) -> UserState:
    """The open image's proposals hidden under UNFAMILIAR_MIN_SCORE (stored, one slider move away); the
    user's own threshold comes back with the next image."""
    return replace(state, min_score=UNFAMILIAR_MIN_SCORE, own_min_score=state.users_min_score)


def delete_image(svc: Services, state: UserState, user: str, confirmed_image_id: int | None = None) -> EditResult:
    """Delete the open image with its annotation and history, then open the next image to label.
    Refused if someone changed it after this tab loaded it, if someone else is labeling it, or if the
    image asked about (`confirmed_image_id`, from the first click) is no longer the open one."""
    project_id, image_id = require_project(state), require_image(state)
    if confirmed_image_id is not None and confirmed_image_id != image_id:
        raise UserError("Another image is open now than when you clicked Delete image…: nothing was deleted. "
                        "Click Delete image… again to delete the open one.")
    with svc.sessions.begin() as session:
        name = repo.delete_image(session, image_id, state.version, user, svc.config.claim_seconds)
    next_id = next_open_image(svc, project_id, None, user)
    message = f"Deleted {name} with its annotation, history and PIQ records."
    if next_id is None:
        return EditResult(on_image(state, None), None, message)
    new_state, view = open_image(svc, state, next_id, user)
    return EditResult(new_state, view, f"{message} Opened {view.name}. {view.notice}".strip())


def skip_image(svc: Services, state: UserState, user: str) -> EditResult:
    """Open the next image still to label that nobody else is labeling, leaving this one as it is."""
    project_id = require_project(state)
    next_id = next_open_image(svc, project_id, state.image_id, user)
    if next_id is None or next_id == state.image_id:
        if state.image_id is None:
            raise UserError("No image is left to label: every image is accepted or being labeled by someone else.")
        new_state, view = load_image(svc, state)
        return EditResult(new_state, view, "No other image is left to label.", ok=False)
    new_state, view = open_image(svc, state, next_id, user)
    return EditResult(new_state, view, f"Skipped to {view.name}. {view.notice}".strip())


def next_open_image(svc: Services, project_id: int, after_id: int | None, user: str | None = None) -> int | None:
    """The next image still to label (new, proposed or in review), after `after_id` and wrapping round;
    with `user`, images that another user is labeling now are skipped."""
    with svc.sessions() as session:
        ids = repo.image_ids(session, project_id, OPEN_STATUSES)
        if user is not None:
            taken = {i for i, holder in repo.active_claims(session, project_id, claim_seconds=svc.config.claim_seconds).items() if holder != user}
            ids = [i for i in ids if i not in taken]
    if not ids:
        return None
    later = [i for i in ids if after_id is None or i > after_id]
    return (later or ids)[0]


def image_choices(svc: Services, state: UserState) -> list[tuple[str, int]]:
    """(label, id) of every image of the project, in upload order, for the image picker."""
    project_id = require_project(state)
    choices: list[tuple[str, int]] = []
    with svc.sessions() as session:
        page = 1
        while True:
            images = repo.list_images(session, project_id, page=page, page_size=repo.MAX_PAGE_SIZE)
            choices += [(f"{i.id}: {i.original_name}", i.id) for i in images]
            if len(images) < repo.MAX_PAGE_SIZE:
                return choices
            page += 1
