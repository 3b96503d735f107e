"""Corrections of the open image: select, relabel, delete, merge, brush, add, undo, redo; each is saved at
once on top of the version the user was looking at, and a save conflict keeps the user's edit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from app.context import ClassOption, UserState, require_image
from app.editing import BrushMode, apply_strokes, merge_masks, stroke_mask
from app.labeling.images import EditResult, load_image, to_storage
from app.segments import SegmentView, find_segment
from app.services import Services, UserError
from storage import repo
from storage.errors import Conflict, Correction
from storage.models import EventType, ImageStatus


def conflict(state: UserState, exc: Conflict) -> EditResult:
    return EditResult(
        replace(state, pending=exc.correction), None,
        f"{exc} Use 'Save mine anyway' to keep your edit as a new revision (theirs stays in the history, "
        "undo brings it back), or 'Reload' to drop yours and see theirs.",
        ok=False,
    )


def save_correction(svc: Services, state: UserState, user: str, correction: Correction, message: str) -> EditResult:
    """Save one edit at once, on top of the version the user was looking at."""
    image_id = require_image(state)
    try:
        with svc.sessions.begin() as session:
            repo.apply_correction(session, image_id, state.version, user, correction)
    except Conflict as exc:
        return conflict(state, exc)
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, message)


def save_pending_anyway(svc: Services, state: UserState, user: str) -> EditResult:
    """After a conflict: write the rejected edit as a new revision over the other user's."""
    if state.pending is None:
        raise UserError("There is no unsaved edit to keep.")
    with svc.sessions.begin() as session:
        repo.reapply_correction(session, require_image(state), state.pending, user, force=True)
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, "Your edit is saved as the newest revision; the other one is in the history.")


def reload_image(svc: Services, state: UserState) -> EditResult:
    new_state, view = load_image(svc, replace(state, pending=None))
    return EditResult(new_state, view, "Reloaded the saved version.")


def _segments(svc: Services, state: UserState) -> list[SegmentView]:
    return load_image(svc, state)[1].segments


def _selected(svc: Services, state: UserState, segment_id: str | None) -> SegmentView:
    if not segment_id:
        raise UserError("Select a segment first: click it in the image or its row in the table.")
    try:
        return find_segment(_segments(svc, state), segment_id)
    except KeyError:
        raise UserError("That segment is no longer in the image (someone removed it?). Reload.") from None


def select_segment(svc: Services, state: UserState, segment_id: str | None) -> UserState:
    seg = _selected(svc, state, segment_id)
    return replace(state, selected_id=seg.id)


def relabel(svc: Services, state: UserState, user: str, segment_id: str | None, option: ClassOption) -> EditResult:
    seg = _selected(svc, state, segment_id)
    new = replace(seg.relabeled(option.name, option.label_space), isthing=option.isthing)
    correction = Correction(EventType.RELABEL.value, [to_storage(seg)], [to_storage(new)])
    return save_correction(svc, state, user, correction, f"Relabeled to {option.label}.")


def delete_segment(svc: Services, state: UserState, user: str, segment_id: str | None) -> EditResult:
    seg = _selected(svc, state, segment_id)
    result = save_correction(svc, state, user, Correction(EventType.DELETE.value, [to_storage(seg)], []),
                             f"Deleted {seg.class_name}.")
    return replace(result, state=replace(result.state, selected_id=None))


def merge_segments(svc: Services, state: UserState, user: str, first_id: str | None, second_id: str | None) -> EditResult:
    """Merge the second segment into the first: the first keeps its id and class."""
    first, second = _selected(svc, state, first_id), _selected(svc, state, second_id)
    if first.id == second.id:
        raise UserError("Pick two different segments to merge.")
    merged = first.with_mask(merge_masks([first.mask, second.mask]))
    correction = Correction(EventType.MERGE.value, [to_storage(first), to_storage(second)], [to_storage(merged)])
    return save_correction(svc, state, user, correction, f"Merged into {first.class_name}.")


def edit_mask(svc: Services, state: UserState, user: str, segment_id: str | None,
              editor_value: dict[str, Any] | None, mode: BrushMode | str) -> EditResult:
    """Add the brush strokes to the selected segment's mask, or erase them from it."""
    seg = _selected(svc, state, segment_id)
    strokes = stroke_mask(editor_value, seg.mask.shape)
    if strokes is None:
        raise UserError("Paint on the image with the brush first, then apply the edit.")
    mode = BrushMode(mode)
    mask = apply_strokes(seg.mask, strokes, mode)
    if not mask.any():
        raise UserError("That would erase the whole segment; use Delete to remove it.")
    event = EventType.EDIT if mode is BrushMode.ADD else EventType.ERASE
    correction = Correction(event.value, [to_storage(seg)], [to_storage(seg.with_mask(mask))])
    return save_correction(svc, state, user, correction, f"Mask of {seg.class_name} updated.")


def add_segment(svc: Services, state: UserState, user: str, editor_value: dict[str, Any] | None,
                option: ClassOption) -> EditResult:
    """A new segment of class `option` from the brush strokes."""
    _, view = load_image(svc, state)
    strokes = stroke_mask(editor_value, view.image.shape[:2])
    if strokes is None:
        raise UserError("Paint the new segment on the image with the brush first.")
    seg = SegmentView(repo.new_segment_id(), option.name, option.label_space, strokes, None, option.isthing)
    result = save_correction(svc, state, user, Correction(EventType.ADD.value, [], [to_storage(seg)]),
                             f"Added a {option.name} segment.")
    return replace(result, state=replace(result.state, selected_id=seg.id)) if result.ok else result


def undo(svc: Services, state: UserState, user: str) -> EditResult:
    return _undo_redo(svc, state, user, repo.undo, "Undone.")


def redo(svc: Services, state: UserState, user: str) -> EditResult:
    return _undo_redo(svc, state, user, repo.redo, "Redone.")


def _undo_redo(svc: Services, state: UserState, user: str, step: Callable[..., int], message: str) -> EditResult:
    image_id = require_image(state)
    try:
        with svc.sessions.begin() as session:
            repo.lock_image(session, image_id)  # before the read: the transaction writes next
            was = repo.get_image(session, image_id).status
            step(session, image_id, state.version, user)
    except Conflict as exc:
        new_state, view = load_image(svc, state)
        return EditResult(new_state, view, f"{exc} Showing the newest version now.", ok=False)
    new_state, view = load_image(svc, state)
    if was == ImageStatus.ACCEPTED and view.status != ImageStatus.ACCEPTED:
        now = str(view.status).replace("_", " ")
        message = f"Acceptance undone: the image is {now} again and out of exports and training."
    elif view.status == ImageStatus.ACCEPTED and was != ImageStatus.ACCEPTED:
        message = "Accepted again."
    return EditResult(new_state, view, message)
