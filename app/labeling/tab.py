"""The Label tab: open an image, propose, correct the segments, accept.

Each event sends only what it changed (`app.labeling.view`): a selection redraws the picture and the
selected segment's line, never the table or the brush picture. The brush picture follows in a second,
quiet step (`on_editor`), and only when the image, its version or the selection changed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from app.context import UserState, class_options, find_option, load_context
from app.editing import BrushMode
from app.events import WARNING_SECONDS, guarded, user_name
from app.finetune.jobs import start_prelabel
from app.labeling import edits, view
from app.labeling.accept import AcceptResult, accept
from app.labeling.images import EditResult, delete_image, image_choices, load_image, open_image, skip_image
from app.labeling.layout import LabelLayout, brush
from app.labeling.propose import propose
from app.render import picture_file
from app.segments import short_names
from app.services import Services, UserError

# Proposals share one queue on the model (one at a time); every other event has the app's default
# concurrency (app/ui.py), so saves never wait behind a proposal.
MODEL_QUEUE: dict[str, Any] = {"concurrency_id": "model", "concurrency_limit": 1}


def unchanged(before: UserState, after: UserState) -> list[str]:
    """The outputs an event that went from state `before` to `after` cannot have changed on screen: the
    image picker (same image), the label-space toggles, the score slider, the conflict row."""
    same = []
    if after.image_id == before.image_id:
        same.append("image")
    if (after.spaces, after.hidden_spaces) == (before.spaces, before.hidden_spaces):
        same.append("toggles")
    if after.min_score == before.min_score:
        same.append("min_score")
    if (after.pending is None) == (before.pending is None):
        same.append("conflict")
    return same


class LabelTab(LabelLayout):
    """Its components (`LabelLayout`), its events, and what other tabs call: `show_project`,
    `refresh_images`, `refresh_classes`, `open_row`."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc = svc
        super().__init__(state)

    # --- values ------------------------------------------------------------------------------------

    def out(self, values: dict[str, Any]) -> tuple[Any, ...]:
        """The outputs' values in order; what an event did not change is skipped. The picture goes as a
        file (`picture_file`)."""
        if isinstance(values.get("overview"), np.ndarray | Image.Image):
            values = {**values, "overview": picture_file(values["overview"], self.overview.GRADIO_CACHE)}
        return tuple(values.get(key, gr.skip()) for key in self.slots)

    def options(self, st: UserState) -> list[Any]:
        return class_options(self.svc, load_context(self.svc, st)) if st.project_id is not None else []

    def current(self, st: UserState, message: str | None = None, with_options: bool = False) -> dict[str, Any]:
        """Everything about the open image as stored now (no image: the tab emptied)."""
        options = self.options(st) if with_options else None
        if st.image_id is None:
            return view.no_image(st, options, message or "")
        st, image = load_image(self.svc, st)
        return view.image(st, image, message, options)

    def edited(self, result: EditResult | AcceptResult) -> dict[str, Any]:
        """Values after an edit; its message goes to the message line (a refusal as a warning too)."""
        if not result.ok:
            gr.Warning(result.message, duration=WARNING_SECONDS)
        image = result.view if isinstance(result, EditResult) else None
        if image is None:
            return self.current(result.state, result.message)
        return view.image(result.state, image, result.message)

    def after_edit(self, result: EditResult | AcceptResult, before: UserState | None = None) -> tuple[Any, ...]:
        """The outputs after an edit; with `before` (the state the event started from), what the edit left as
        it was on screen is not sent again (each sent property costs gradio a component rebuilt per save)."""
        values = self.edited(result)
        if before is not None:
            for key in unchanged(before, result.state):
                values.pop(key, None)
        return self.out(values)

    # --- what other tabs call -----------------------------------------------------------------------

    @guarded
    def show_project(self, st: UserState) -> tuple[Any, ...]:
        """The tab emptied for a project just opened (the previous project's image must not stay on show)."""
        return self.out({**self.current(st, "", with_options=True), "image": self.images(st)})

    def images(self, st: UserState) -> Any:
        choices = image_choices(self.svc, st) if st.project_id is not None else []
        return gr.Dropdown(choices=choices, value=st.image_id)

    @guarded
    def refresh_images(self, st: UserState) -> Any:
        return self.images(st)

    @guarded
    def refresh_classes(self, st: UserState) -> Any:
        """The class picker offers the project's class set (just saved) at once."""
        return gr.Dropdown(choices=[o.label for o in self.options(st)], value=None)

    @guarded
    def open_row(self, st: UserState, evt: gr.SelectData, request: gr.Request) -> tuple[Any, ...]:
        """A row of the Projects tab's image table was clicked: open that image here, and show this tab."""
        row = evt.row_value or []
        image_id = next((v for v in row if isinstance(v, int | float) and not isinstance(v, bool)), None)
        if image_id is None:
            raise UserError("Click a row of the image table to open that image.")
        return (*self.on_pick_image(st, int(image_id), request), gr.Tabs(selected="label"))

    # --- wiring ------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks) -> None:
        state, outputs = self.state, self.outputs
        quiet: dict[str, Any] = {"show_progress": "hidden", "queue": False}
        busy: dict[str, Any] = {"show_progress": "minimal", "show_progress_on": [self.message_md]}
        events = [
            self.image_dd.input(self.on_pick_image, [state, self.image_dd], outputs, api_name="open_image",
                                show_progress_on=[self.title_md]),
            self.overview.select(self.on_click, [state], outputs, **quiet),
            self.select_id.submit(self.on_select_id, [state, self.select_id], outputs, api_name="select_segment",
                                  **quiet),
            self.segments_df.select(self.on_row, [state], outputs, **quiet),
            self.opacity.release(self.on_opacity, [state, self.opacity], outputs, **quiet),
            self.min_score.release(self.on_min_score, [state, self.min_score], outputs, **quiet),
            self.toggles.input(self.on_toggles, [state, self.toggles], outputs, **quiet),
            self.propose_btn.click(self.on_propose, [state], outputs, api_name="propose",
                                   show_progress_on=[self.title_md], **MODEL_QUEUE),
            # A background job (`python -m train prelabel`): its progress is in the Fine-tune tab's job list.
            self.propose_all_btn.click(self.on_propose_all, [state], [self.message_md], api_name="propose_all",
                                       show_progress_on=[self.message_md]),
            self.relabel_btn.click(self.on_relabel, [state, self.class_dd], outputs, api_name="relabel", **busy),
            self.delete_btn.click(self.on_delete, [state], outputs, api_name="delete_segment", **busy),
            self.delete_like_btn.click(self.on_delete_like, [state], outputs, api_name="delete_shown_like", **busy),
            self.merge_btn.click(self.on_merge, [state, self.merge_dd], outputs, api_name="merge", **busy),
            self.add_btn.click(self.on_brush_add, [state, self.editor], outputs, api_name="add_to_mask", **busy),
            self.erase_btn.click(self.on_brush_erase, [state, self.editor], outputs, api_name="erase_from_mask",
                                 **busy),
            self.new_btn.click(self.on_new_segment, [state, self.editor, self.class_dd], outputs,
                               api_name="add_segment", **busy),
            self.undo_btn.click(self.on_undo, [state], outputs, api_name="undo", **busy),
            self.redo_btn.click(self.on_redo, [state], outputs, api_name="redo", **busy),
            self.keep_btn.click(self.on_keep_mine, [state], outputs, api_name="save_mine", **busy),
            self.reload_btn.click(self.on_reload, [state], outputs, api_name="reload", **busy),
            self.accept_btn.click(self.on_accept, [state], outputs, api_name="accept", **busy),
            self.accept_empty_btn.click(self.on_accept_empty, [state], outputs, **busy),
            self.skip_btn.click(self.on_skip, [state], outputs, api_name="skip_image", **busy),
            self.confirm_delete_btn.click(self.on_delete_image, [state, self.delete_target],
                                          [*outputs, self.confirm_delete_row, self.delete_target],
                                          api_name="delete_image", **busy),
        ]
        for event in events:
            self.then_editor(event)
        self.then_editor(self.brush_panel.expand(lambda: True, None, self.brush_open, queue=False))
        self.brush_panel.collapse(lambda: False, None, self.brush_open, queue=False)
        # The first click remembers which image it was about; the confirmation deletes only that one.
        self.delete_image_btn.click(lambda st: (gr.Row(visible=st.image_id is not None), st.image_id), [state],
                                    [self.confirm_delete_row, self.delete_target], **quiet)
        self.cancel_delete_btn.click(lambda: (gr.Row(visible=False), None), None,
                                     [self.confirm_delete_row, self.delete_target], **quiet)
        self.cancel_empty_btn.click(lambda: gr.Row(visible=False), None, [self.accept_empty_row], **quiet)

    def then_editor(self, event: Any) -> None:
        """After `event`, bring the brush picture up to date (quietly, and only when it is open and out of date).
        Outside the queue: a browser sends this after every save and click, and with the brush closed (the
        usual case) it only answers "nothing", which through the queue cost a second event stream each time."""
        event.then(self.on_editor, [self.state, self.editor_key, self.brush_open], [self.editor, self.editor_key],
                   show_progress="hidden", queue=False)

    # --- events: looking -----------------------------------------------------------------------------

    @guarded
    def on_editor(self, st: UserState, key: tuple[Any, ...] | None, brush_open: bool) -> tuple[Any, Any]:
        """The brush picture for the open image and selection, unless it is closed or shows them already."""
        if not brush_open:
            return gr.skip(), gr.skip()
        if st.image_id is None:
            return None, None
        st, image = load_image(self.svc, st)
        now = (image.image_id, image.version, st.selected_id)
        if key is not None and tuple(key) == now:
            return gr.skip(), gr.skip()
        value, size = view.editor(st, image)
        background = picture_file(value["background"], self.editor.GRADIO_CACHE)
        return gr.ImageEditor(value={**value, "background": background}, brush=brush(size)), now

    @guarded
    def on_pick_image(self, st: UserState, image_id: int | str | None, request: gr.Request) -> tuple[Any, ...]:
        if image_id is None:
            return self.out({})
        st, image = open_image(self.svc, st, image_id, user_name(request))
        if image.other_labeler:
            gr.Warning(f"{image.other_labeler} is labeling this image right now; your edits may clash.")
        return self.out(view.image(st, image, image.notice))

    @guarded
    def on_show_current(self, st: UserState) -> tuple[Any, ...]:
        """The open image as stored now (the tab's state as it is when this runs, not when clicked)."""
        return self.out(self.current(st))

    @guarded
    def on_click(self, st: UserState, evt: gr.SelectData) -> tuple[Any, ...]:
        if st.image_id is None:
            return self.out({})
        x, y = evt.index
        st, image = edits.select_at(self.svc, st, (int(x), int(y)))
        return self.out(view.selection(st, image))

    @guarded
    def on_select_id(self, st: UserState, segment_id: str) -> tuple[Any, ...]:
        """API clients select a segment by its id (gradio_client: predict(id, api_name="/select_segment"))."""
        if st.image_id is None:
            raise UserError("Open an image first.")
        st, image = edits.select_segment(self.svc, st, (segment_id or "").strip())
        return self.out(view.selection(st, image))

    @guarded
    def on_row(self, st: UserState, evt: gr.SelectData) -> tuple[Any, ...]:
        if st.image_id is None:
            return self.out({})
        st, image = load_image(self.svc, st)
        names = {name: seg_id for seg_id, name in short_names(image.segments).items()}
        name = (evt.row_value or [None])[0]
        if name not in names:
            raise UserError("That row is out of date (the image changed); click it again.")
        return self.out(view.selection(replace(st, selected_id=names[name]), image))

    def _settings(self, st: UserState) -> tuple[Any, ...]:
        st, image = load_image(self.svc, st)
        values = view.image(st, image)
        return self.out({k: values[k] for k in ("state", "overview", "title", "table", "selected", "merge")})

    @guarded
    def on_opacity(self, st: UserState, opacity: float) -> tuple[Any, ...]:
        if st.image_id is None:
            return self.out({"state": replace(st, opacity=float(opacity))})
        st, image = load_image(self.svc, replace(st, opacity=float(opacity)))
        return self.out({"state": st, "overview": view.selection(st, image)["overview"]})

    @guarded
    def on_min_score(self, st: UserState, min_score: float) -> tuple[Any, ...]:
        st = replace(st, min_score=float(min_score), own_min_score=None)  # the user's choice from now on
        return self._settings(st) if st.image_id is not None else self.out({"state": st})

    @guarded
    def on_toggles(self, st: UserState, ticked: list[str] | None) -> tuple[Any, ...]:
        st = replace(st, hidden_spaces=frozenset(st.spaces) - set(ticked or []))
        return self._settings(st) if st.image_id is not None else self.out({"state": st})

    # --- events: changing --------------------------------------------------------------------------

    @guarded
    def on_propose(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(propose(self.svc, st, user_name(request)), st)

    @guarded
    def on_propose_all(self, st: UserState, request: gr.Request) -> Any:
        job = start_prelabel(self.svc, st, user_name(request))
        return (f"Started job {job.id}: proposing for {job.args['images']} new image(s) in the background, one "
                "at a time (label on meanwhile). Its progress is in the job list on the Fine-tune tab.")

    @guarded
    def on_relabel(self, st: UserState, label: str | None, request: gr.Request) -> tuple[Any, ...]:
        option = find_option(self.options(st), label)
        return self.after_edit(edits.relabel(self.svc, st, user_name(request), st.selected_id, option), st)

    @guarded
    def on_delete(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.delete_segment(self.svc, st, user_name(request), st.selected_id), st)

    @guarded
    def on_delete_like(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.delete_shown_like(self.svc, st, user_name(request), st.selected_id), st)

    @guarded
    def on_merge(self, st: UserState, other: str | None, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.merge_segments(self.svc, st, user_name(request), st.selected_id, other), st)

    @guarded
    def on_brush_add(self, st: UserState, value: dict | None, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.edit_mask(self.svc, st, user_name(request), st.selected_id, value,
                                               BrushMode.ADD), st)

    @guarded
    def on_brush_erase(self, st: UserState, value: dict | None, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.edit_mask(self.svc, st, user_name(request), st.selected_id, value,
                                               BrushMode.ERASE), st)

    @guarded
    def on_new_segment(self, st: UserState, value: dict | None, label: str | None,
                       request: gr.Request) -> tuple[Any, ...]:
        option = find_option(self.options(st), label)
        return self.after_edit(edits.add_segment(self.svc, st, user_name(request), value, option), st)

    @guarded
    def on_undo(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.undo(self.svc, st, user_name(request)), st)

    @guarded
    def on_redo(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.redo(self.svc, st, user_name(request)), st)

    @guarded
    def on_keep_mine(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.save_pending_anyway(self.svc, st, user_name(request)), st)

    @guarded
    def on_reload(self, st: UserState) -> tuple[Any, ...]:
        return self.after_edit(edits.reload_image(self.svc, st), st)

    def _accept(self, st: UserState, request: gr.Request, empty_ok: bool) -> tuple[Any, ...]:
        result = accept(self.svc, st, user_name(request), empty_ok=empty_ok)
        if result.asks_empty:
            return self.out({"accept_empty": gr.Row(visible=True), "message": result.message})
        return self.after_edit(result, st)

    @guarded
    def on_accept(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self._accept(st, request, empty_ok=False)

    @guarded
    def on_accept_empty(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self._accept(st, request, empty_ok=True)

    @guarded
    def on_skip(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(skip_image(self.svc, st, user_name(request)), st)

    @guarded
    def on_delete_image(self, st: UserState, target: int | None, request: gr.Request) -> tuple[Any, ...]:
        if target is None:
            raise UserError("Click Delete image… first.")
        result = delete_image(self.svc, st, user_name(request), confirmed_image_id=target)
        values = {**self.edited(result), "image": self.images(result.state)}
        return (*self.out(values), gr.Row(visible=False), None)
