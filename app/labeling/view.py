"""The Label tab's component values from an open image (formatting only; nothing is decided here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import gradio as gr
import pandas as pd

from app.context import ClassOption, UserState
from app.editing import editor_value
from app.labeling.images import ImageView
from app.render import SEGMENT_COLUMNS, annotated_value, color_map, segment_label, segment_rows
from app.segments import SegmentView


def segment_choices(view: ImageView | None) -> list[tuple[str, str]]:
    return [(segment_label(s), s.id) for s in view.segments] if view else []


def space_names(view: ImageView | None) -> list[str]:
    if view is None:
        return []
    return sorted({part for s in view.segments for part in s.label_space.split("+")})


def shown(view: ImageView, visible: Sequence[str] | None) -> list[SegmentView]:
    """Segments of the label spaces ticked in the toggles (a fused segment shows if any of its spaces is on)."""
    if visible is None:
        return list(view.segments)
    on = set(visible)
    return [s for s in view.segments if on & set(s.label_space.split("+"))]


LABEL_OUTPUTS = 11  # how many values `label_tab` returns
MAX_LEGEND = 200  # legend entries a session's annotated image keeps colors for (UserState.legend)


def label_tab(
    state: UserState, view: ImageView | None, visible: Sequence[str] | None, options: Sequence[ClassOption]
) -> tuple[Any, ...]:
    """Values for: state, annotated image, segment table, segment picker, merge picker, editor,
    space toggles, class picker, undo button, redo button, image title.

    Component changes are `gr.update` dicts, not new components: a component built with a value
    postprocesses it at once (for the annotated image: an encoded image per segment), and Gradio would
    do it all again for the update. The annotated image is an update only when its color map must
    change: Gradio postprocesses an update's value on its event loop, where it holds up every other
    request, and a plain value in a worker thread, with the color map the session's image already has
    (`UserState.legend`)."""
    if view is None:
        empty = pd.DataFrame([], columns=SEGMENT_COLUMNS)
        return (state, None, empty, gr.update(choices=[], value=None), gr.update(choices=[], value=None),
                None, gr.update(choices=[], value=[]), gr.update(choices=[o.label for o in options]),
                gr.update(interactive=False), gr.update(interactive=False), "No image open.")
    spaces = space_names(view)
    visible = [s for s in (visible if visible is not None else spaces) if s in spaces] or spaces
    segs = shown(view, visible)
    selected = next((s for s in view.segments if s.id == state.selected_id), None)
    annotated: Any = annotated_value(view.image, segs)
    colors = set(color_map(segs).items())
    if not colors <= state.legend:  # the map grows with the labels shown, up to MAX_LEGEND, then starts over
        legend = state.legend | colors if len(state.legend | colors) <= MAX_LEGEND else colors
        state = replace(state, legend=frozenset(legend))
        annotated = gr.update(value=annotated, color_map=dict(legend))
    return (
        state,
        annotated,
        pd.DataFrame(segment_rows(segs), columns=SEGMENT_COLUMNS),
        gr.update(choices=segment_choices(view), value=state.selected_id),
        gr.update(choices=segment_choices(view), value=None),
        editor_value(view.image, None if selected is None else selected.mask,
                     None if selected is None else selected.class_name),
        gr.update(choices=spaces, value=visible),
        gr.update(choices=[o.label for o in options], value=None if selected is None else
                  f"{selected.class_name} [{selected.label_space}]"),
        gr.update(interactive=view.can_undo),
        gr.update(interactive=view.can_redo),
        f"### {view.name} — {view.status.replace('_', ' ')}, version {view.version}, {len(view.segments)} segment(s)"
        + (f" — {view.other_labeler} is labeling it now" if view.other_labeler else ""),
    )
