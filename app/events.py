"""Adapters between Gradio and the handlers: user-facing errors, and handler results → component values.

Nothing here decides anything; it only formats. Every event that can fail goes through `guarded`,
so a user sees one short message (gr.Error) and never a traceback, and no state is overwritten.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gradio as gr
import pandas as pd

from app import handlers as h
from app.editing import editor_value
from app.render import SEGMENT_COLUMNS, annotated_value, color_map, segment_label, segment_rows
from app.services import UserError
from formats.images import ImageError
from resi_core.labels import LabelError
from storage.errors import StorageError

log = logging.getLogger("resi.app")
F = TypeVar("F", bound=Callable[..., Any])
USER_ERRORS = (UserError, StorageError, LabelError, ImageError)


def guarded(fn: F) -> F:
    """Turn errors a user caused into one message; log anything else and say that nothing was lost."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except USER_ERRORS as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except Exception as exc:
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"Something went wrong ({type(exc).__name__}). Everything saved before is safe; "
                "the details are in the server log.", print_exception=False,
            ) from None

    return wrapper  # type: ignore[return-value]


def user_name(request: gr.Request | None) -> str:
    return (getattr(request, "username", None) or "local") if request is not None else "local"


def image_choices(overview: h.ProjectOverview) -> list[tuple[str, int]]:
    return [(f"{row[0]}: {row[1]} ({row[2].replace('_', ' ')})", int(row[0])) for row in overview.rows]


def images_frame(overview: h.ProjectOverview) -> pd.DataFrame:
    return pd.DataFrame(overview.rows, columns=h.IMAGE_COLUMNS)


def segment_choices(view: h.ImageView | None) -> list[tuple[str, str]]:
    return [(segment_label(s), s.id) for s in view.segments] if view else []


def space_names(view: h.ImageView | None) -> list[str]:
    if view is None:
        return []
    return sorted({part for s in view.segments for part in s.label_space.split("+")})


def shown(view: h.ImageView, visible: Sequence[str] | None) -> list[Any]:
    """Segments of the label spaces ticked in the toggles (a fused segment shows if any of its spaces is on)."""
    if visible is None:
        return list(view.segments)
    on = set(visible)
    return [s for s in view.segments if on & set(s.label_space.split("+"))]


LABEL_OUTPUTS = 11  # how many values `label_tab` returns


def label_tab(
    state: h.UserState, view: h.ImageView | None, visible: Sequence[str] | None, options: Sequence[h.ClassOption]
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


def quality_frames(report: h.QualityReport) -> tuple[pd.DataFrame, pd.DataFrame]:
    over_time = pd.DataFrame(report.over_time, columns=["time", "piq", "model"])
    if not over_time.empty:
        over_time["time"] = pd.to_datetime(over_time["time"], utc=True)
    per_model = pd.DataFrame(report.per_model, columns=["model", "mean_piq", "images"])
    return over_time, per_model


def jobs_frame(jobs: Sequence[h.JobView]) -> pd.DataFrame:
    return pd.DataFrame([j.row for j in jobs], columns=h.JOB_COLUMNS)


def job_progress_html(job: h.JobView | None) -> str:
    """One job's status, a progress bar and its latest message."""
    if job is None:
        return "<p>No fine-tuning job yet.</p>"
    return (
        f"<div><b>Job {job.id}</b>: label space <b>{html.escape(job.space)}</b>, "
        f"<span class='job-status'>{job.status}</span>"
        f"<br><progress value='{job.progress:.3f}' max='1' style='width:100%'></progress> {job.progress:.0%}"
        f"<br>{html.escape(job.message)}</div>"
    )
