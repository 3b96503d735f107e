"""Corrections of the open image: select, relabel, delete, merge, brush, add, undo, redo; each is saved at
once on top of the version the user was looking at, and a save conflict keeps the user's edit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from app.context import ClassOption, UserState, require_image
from app.editing import BrushMode, apply_strokes, merge_masks, stroke_mask
from app.labeling.images import EditResult, ImageView, load_image, to_storage, visible_segments
from app.render import display_shape, segments_at
from app.segments import SegmentView, find_segment, short_names
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


def _pick(svc: Services, state: UserState, segment_id: str | None) -> tuple[SegmentView, str, ImageView]:
    """The segment `segment_id` of the open image as stored now, its short name, and the image."""
    if not segment_id:
        raise UserError("Select a segment first: click it in the image or its row in the table.")
    _, view = load_image(svc, state)
    try:
        seg = find_segment(view.segments, segment_id)
    except KeyError:
        raise UserError("That segment is no longer in the image (someone removed it?). Reload.") from None
    return seg, short_names(view.segments)[seg.id], view


def select_segment(svc: Services, state: UserState, segment_id: str | None) -> tuple[UserState, ImageView]:
    """Select segment `segment_id` of the open image as stored now; the state and the image, as `select_at`."""
    if not segment_id:
        raise UserError("Select a segment first: click it in the image or its row in the table.")
    state, view = load_image(svc, state)
    if not any(s.id == segment_id for s in view.segments):
        raise UserError("That segment is no longer in the image (someone removed it?). Reload.")
    return replace(state, selected_id=segment_id), view


SAME_SPOT_PX = 4  # two clicks this close (in the picture) are on one spot: the second cycles


def select_at(svc: Services, state: UserState, point: tuple[int, int]) -> tuple[UserState, ImageView]:
    """Select the topmost shown segment under `point` (x, y in the picture); a second click on the same
    spot selects the one under it, and so on round. A click on no segment clears the selection."""
    state, view = load_image(svc, state)
    hits = segments_at(visible_segments(view.segments, state), point, display_shape(view.image.shape))
    again = (state.click is not None and state.selected_id in hits
             and max(abs(point[0] - state.click[0]), abs(point[1] - state.click[1])) <= SAME_SPOT_PX)
    chosen = hits[(hits.index(state.selected_id) + 1) % len(hits)] if again else (hits[0] if hits else None)
    return replace(state, selected_id=chosen, click=point), view


def _shown_again(result: EditResult, space: str) -> EditResult:
    """After an edit that gave a segment to `space`: that space is shown (a relabelled or drawn segment
    never vanishes behind an unticked toggle)."""
    spaces = set(space.split("+"))
    return replace(result, state=replace(result.state, hidden_spaces=result.state.hidden_spaces - spaces))


def relabel(svc: Services, state: UserState, user: str, segment_id: str | None, option: ClassOption) -> EditResult:
    seg, name, _ = _pick(svc, state, segment_id)
    new = replace(seg.relabeled(option.name, option.label_space), isthing=option.isthing)
    correction = Correction(EventType.RELABEL.value, [to_storage(seg)], [to_storage(new)])
    return _shown_again(save_correction(svc, state, user, correction, f"Relabeled {name} to {option.label}."),
                        option.label_space)


def delete_segment(svc: Services, state: UserState, user: str, segment_id: str | None) -> EditResult:
    seg, name, _ = _pick(svc, state, segment_id)
    result = save_correction(svc, state, user, Correction(EventType.DELETE.value, [to_storage(seg)], []),
                             f"Deleted {name}.")
    return replace(result, state=replace(result.state, selected_id=None))


def delete_shown_like(svc: Services, state: UserState, user: str, segment_id: str | None) -> EditResult:
    """Delete every shown segment of the selected one's class and label space, as one undoable edit
    (e.g. the weak proposals left above the score threshold)."""
    seg, _, view = _pick(svc, state, segment_id)
    doomed = [s for s in visible_segments(view.segments, state)
              if (s.class_name, s.label_space) == (seg.class_name, seg.label_space)]
    correction = Correction(EventType.DELETE.value, [to_storage(s) for s in doomed], [])
    result = save_correction(svc, state, user, correction,
                             f"Deleted {len(doomed)} shown {seg.class_name} [{seg.label_space}] segment(s).")
    return replace(result, state=replace(result.state, selected_id=None))


def merge_segments(svc: Services, state: UserState, user: str, first_id: str | None, second_id: str | None) -> EditResult:
    """Merge the second segment into the first: the first keeps its id and class."""
    first, name, _ = _pick(svc, state, first_id)
    if not second_id:
        raise UserError(f"Pick the segment to merge into {name} under 'Merge with' first.")
    second, other, _ = _pick(svc, state, second_id)
    if first.id == second.id:
        raise UserError("Pick two different segments to merge.")
    merged = first.with_mask(merge_masks([first.mask, second.mask]))
    correction = Correction(EventType.MERGE.value, [to_storage(first), to_storage(second)], [to_storage(merged)])
    return save_correction(svc, state, user, correction, f"Merged {other} into {name}.")


def edit_mask(svc: Services, state: UserState, user: str, segment_id: str | None,
              editor_value: dict[str, Any] | None, mode: BrushMode | str) -> EditResult:
    """Add the brush strokes to the selected segment's mask, or erase them from it."""
    seg, name, _ = _pick(svc, state, segment_id)
    strokes = stroke_mask(editor_value, seg.mask.shape)
    if strokes is None:
        raise UserError("Paint on the brush picture first, then add it to the mask or erase it from the mask.")
    mode = BrushMode(mode)
    mask = apply_strokes(seg.mask, strokes, mode)
    if not mask.any():
        raise UserError("That would erase the whole segment; use Delete to remove it.")
    if np.array_equal(mask, seg.mask):
        raise UserError(f"The brush strokes do not change {name}: paint over its edge (erase) or beside it (add).")
    event = EventType.EDIT if mode is BrushMode.ADD else EventType.ERASE
    correction = Correction(event.value, [to_storage(seg)], [to_storage(seg.with_mask(mask))])
    return save_correction(svc, state, user, correction, f"Mask of {name} updated.")


def add_segment(svc: Services, state: UserState, user: str, editor_value: dict[str, Any] | None,
                option: ClassOption) -> EditResult:
    """A new segment of class `option` from the brush strokes."""
    _, view = load_image(svc, state)
    strokes = stroke_mask(editor_value, view.image.shape[:2])
    if strokes is None:
        raise UserError("Paint the new segment on the brush picture first.")
    seg = SegmentView(repo.new_segment_id(), option.name, option.label_space, strokes, None, option.isthing)
    result = save_correction(svc, state, user, Correction(EventType.ADD.value, [], [to_storage(seg)]),
                             f"Added a {option.name} segment.")
    if not result.ok:
        return result
    return _shown_again(replace(result, state=replace(result.state, selected_id=seg.id)), option.label_space)


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
