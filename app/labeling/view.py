"""The Label tab's component values from an open image (formatting only; nothing is decided here)."""

from __future__ import annotations

from collections.abc import Sequence
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


def label_tab(
    state: UserState, view: ImageView | None, visible: Sequence[str] | None, options: Sequence[ClassOption]
) -> tuple[Any, ...]:
    """Values for: state, annotated image, segment table, segment picker, merge picker, editor,
    space toggles, class picker, undo button, redo button, image title."""
    if view is None:
        empty = pd.DataFrame([], columns=SEGMENT_COLUMNS)
        return (state, None, empty, gr.Dropdown(choices=[], value=None), gr.Dropdown(choices=[], value=None),
                None, gr.CheckboxGroup(choices=[], value=[]), gr.Dropdown(choices=[o.label for o in options]),
                gr.Button(interactive=False), gr.Button(interactive=False), "No image open.")
    spaces = space_names(view)
    visible = [s for s in (visible if visible is not None else spaces) if s in spaces] or spaces
    segs = shown(view, visible)
    selected = next((s for s in view.segments if s.id == state.selected_id), None)
    return (
        state,
        gr.AnnotatedImage(value=annotated_value(view.image, segs), color_map=color_map(segs)),
        pd.DataFrame(segment_rows(segs), columns=SEGMENT_COLUMNS),
        gr.Dropdown(choices=segment_choices(view), value=state.selected_id),
        gr.Dropdown(choices=segment_choices(view), value=None),
        editor_value(view.image, None if selected is None else selected.mask,
                     None if selected is None else selected.class_name),
        gr.CheckboxGroup(choices=spaces, value=visible),
        gr.Dropdown(choices=[o.label for o in options], value=None if selected is None else
                    f"{selected.class_name} [{selected.label_space}]"),
        gr.Button(interactive=view.can_undo),
        gr.Button(interactive=view.can_redo),
        f"### {view.name} — {view.status.replace('_', ' ')}, version {view.version}, {len(view.segments)} segment(s)"
        + (f" — {view.other_labeler} is labeling it now" if view.other_labeler else ""),
    )
