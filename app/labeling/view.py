"""The Label tab's component values for an open image, by what an event changed: everything (an image
opened or edited), only the selection, or nothing. Formatting only; nothing is decided here.

Property changes are `gr.update(...)` dicts, not components: gradio builds the updated component from them
anyway, and a component built here as well (gr.Dropdown(...)) doubled that cost on every save. A new value
alone goes as the plain value, which gradio only post-processes (a `gr.update` builds a component).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from app.context import ClassOption, UserState
from app.editing import brush_size, editor_value
from app.labeling.images import ImageView, visible_segments
from app.render import overview_picture
from app.segments import SegmentView, short_names

SEGMENT_COLUMNS = ["segment", "class", "space", "score", "pixels"]
NOTHING_SELECTED = ("Nothing selected: click a segment on the picture (click the same spot again for the one "
                    "under it) or a row of the table.")


def option_label(seg: SegmentView) -> str:
    return ClassOption(seg.class_name, seg.label_space).label


def segment_rows(view: ImageView, state: UserState) -> list[list[Any]]:
    names = short_names(view.segments)
    return [[names[s.id], s.class_name, s.label_space, None if s.score is None else round(s.score, 2), s.area]
            for s in visible_segments(view.segments, state)]


def title(view: ImageView, state: UserState) -> str:
    shown = len(visible_segments(view.segments, state))
    hidden = len(view.segments) - shown
    text = (f"### {view.name}: {view.status.replace('_', ' ')}, version {view.version}, "
            f"{len(view.segments)} segment(s)" + (f", {hidden} hidden" if hidden else ""))
    return text + (f". {view.other_labeler} is labeling it now." if view.other_labeler else "")


def selection(state: UserState, view: ImageView) -> dict[str, Any]:
    """What changes when only the selection did: the picture, the selected segment's line, the class
    picker's value, the merge choices (never the segment itself) and the delete-like button."""
    names = short_names(view.segments)
    shown = visible_segments(view.segments, state)
    seg = next((s for s in view.segments if s.id == state.selected_id), None)
    if seg is None:
        line = NOTHING_SELECTED
    else:
        score = "drawn by hand" if seg.score is None else f"score {seg.score:.2f}"
        line = f"Selected: **{names[seg.id]}** [{seg.label_space}], {score}, {seg.area:,} px"
    return {
        "state": state,
        "overview": overview_picture(view.image, shown, state.selected_id, state.opacity),
        "selected": line,
        "class": None if seg is None else option_label(seg),
        "merge": gr.update(choices=[(names[s.id], s.id) for s in shown if s.id != state.selected_id], value=None),
        "delete_like": gr.update(value="Delete all shown " + (seg.class_name if seg else "of its class"),
                                interactive=seg is not None),
    }


def image(state: UserState, view: ImageView, message: str | None = None,
          options: Sequence[ClassOption] | None = None) -> dict[str, Any]:
    """Everything about the open image (after it was opened or edited). `options`: new class choices."""
    values = selection(state, view)
    values.update({
        "image": view.image_id,
        "title": title(view, state),
        "toggles": gr.update(choices=list(state.spaces),
                             value=[s for s in state.spaces if s not in state.hidden_spaces]),
        "table": pd.DataFrame(segment_rows(view, state), columns=SEGMENT_COLUMNS),
        "undo": gr.update(interactive=view.can_undo),
        "redo": gr.update(interactive=view.can_redo),
        "conflict": gr.update(visible=state.pending is not None),
        "accept_empty": gr.update(visible=False),
        "min_score": state.min_score,  # an unfamiliar photo's proposals start hidden
    })
    if message is not None:
        values["message"] = message
    if options is not None:
        values["class"] = gr.update(choices=[o.label for o in options], value=values["class"])
    return values


def no_image(state: UserState, options: Sequence[ClassOption] | None = None, message: str = "") -> dict[str, Any]:
    """The tab with no image open. `options`: new class choices (else the class picker keeps its own)."""
    return {
        "state": state, "image": gr.update(value=None), "title": "No image open.", "overview": None,
        "toggles": gr.update(choices=[], value=[]),
        "table": pd.DataFrame([], columns=SEGMENT_COLUMNS), "selected": NOTHING_SELECTED,
        "class": gr.update(value=None) if options is None else gr.update(choices=[o.label for o in options],
                                                                          value=None),
        "merge": gr.update(choices=[], value=None), "delete_like": gr.update(interactive=False),
        "undo": gr.update(interactive=False), "redo": gr.update(interactive=False),
        "conflict": gr.update(visible=False), "accept_empty": gr.update(visible=False), "message": message,
    }


def editor(state: UserState, view: ImageView) -> tuple[dict[str, Any], int]:
    """The brush picture's value (the image with the selected mask tinted, no strokes) and its brush radius."""
    seg = next((s for s in view.segments if s.id == state.selected_id), None)
    value = editor_value(view.image, None if seg is None else seg.mask, None if seg is None else seg.class_name)
    return value, brush_size(view.image.shape)
