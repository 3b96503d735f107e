"""The Label tab: open an image, propose, correct the segments, accept."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.context import ClassOption, UserState, class_options, find_option, load_context
from app.editing import BrushMode
from app.events import guarded, user_name
from app.labeling import edits
from app.labeling.accept import AcceptResult, accept
from app.labeling.images import EditResult, ImageView, delete_image, load_image, open_image, skip_image
from app.labeling.propose import propose, propose_all
from app.labeling.view import LABEL_OUTPUTS, label_tab, shown
from app.projects.handlers import project_overview
from app.render import SEGMENT_COLUMNS
from app.services import Services, UserError


def image_choices(svc: Services, st: UserState) -> list[tuple[str, int]]:
    rows = project_overview(svc, st).rows
    return [(f"{row[0]}: {row[1]} ({row[2].replace('_', ' ')})", int(row[0])) for row in rows]


class LabelTab:
    """Its components, and `changed`: the events after which an image's status may be different."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Label", id="label"):
            self.delete_target = gr.State(None)  # the image "Delete image…" was clicked for
            with gr.Row():
                self.image_dd = gr.Dropdown(label="Image", choices=[], elem_id="image-picker", scale=3,
                                            allow_custom_value=True)
                self.propose_btn = gr.Button("Propose", elem_id="propose-btn", variant="primary", scale=1)
                self.propose_all_btn = gr.Button("Propose all new", elem_id="propose-all-btn", scale=1)
                self.skip_btn = gr.Button("Skip →", elem_id="skip-btn", scale=1)
                self.delete_image_btn = gr.Button("Delete image…", elem_id="delete-image-btn", scale=1)
            with gr.Row(visible=False) as self.confirm_delete_row:  # a second click, so one slip deletes nothing
                gr.Markdown("Delete this image with its segments, history and PIQ records? This cannot be undone.")
                self.confirm_delete_btn = gr.Button("Yes, delete the image", elem_id="confirm-delete-image-btn",
                                                    variant="stop")
                self.cancel_delete_btn = gr.Button("Keep it", elem_id="cancel-delete-image-btn")
            self.title_md = gr.Markdown("No image open.", elem_id="image-title")
            with gr.Row():
                with gr.Column(scale=3):
                    self.annotated = gr.AnnotatedImage(label="Segments", elem_id="annotated")
                    self.toggles = gr.CheckboxGroup(label="Show label spaces", choices=[], elem_id="space-toggles")
                    self.segments_df = gr.Dataframe(headers=SEGMENT_COLUMNS, interactive=False,
                                                    elem_id="segments-table", label="Segments")
                with gr.Column(scale=2):
                    self.segment_dd = gr.Dropdown(label="Selected segment", choices=[], elem_id="segment-picker")
                    self.class_dd = gr.Dropdown(label="Class", choices=[], elem_id="class-picker")
                    with gr.Row():
                        self.relabel_btn = gr.Button("Relabel", elem_id="relabel-btn")
                        self.delete_btn = gr.Button("Delete", elem_id="delete-btn", variant="stop")
                    with gr.Row():
                        self.merge_dd = gr.Dropdown(label="Merge with", choices=[], elem_id="merge-picker")
                        self.merge_btn = gr.Button("Merge", elem_id="merge-btn")
                    self.editor = gr.ImageEditor(label="Brush", elem_id="editor", sources=(), transforms=(),
                                                 layers=False, brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                                 type="numpy", height=420)
                    self.mode = gr.Radio([m.value for m in BrushMode], value=BrushMode.ADD.value, label="Brush",
                                         elem_id="brush-mode")
                    with gr.Row():
                        self.apply_btn = gr.Button("Apply brush to segment", elem_id="apply-brush-btn")
                        self.new_btn = gr.Button("New segment from brush", elem_id="new-segment-btn")
                    with gr.Row():
                        self.undo_btn = gr.Button("Undo", elem_id="undo-btn", interactive=False)
                        self.redo_btn = gr.Button("Redo", elem_id="redo-btn", interactive=False)
                        self.accept_btn = gr.Button("Accept & next", elem_id="accept-btn", variant="primary")
                    with gr.Row():
                        self.keep_btn = gr.Button("Save mine anyway", elem_id="keep-mine-btn")
                        self.reload_btn = gr.Button("Reload", elem_id="reload-btn")
                    self.edit_md = gr.Markdown(elem_id="edit-message")
        self.outputs = [self.state, self.annotated, self.segments_df, self.segment_dd, self.merge_dd, self.editor,
                        self.toggles, self.class_dd, self.undo_btn, self.redo_btn, self.title_md]
        assert len(self.outputs) == LABEL_OUTPUTS
        # The image picker is an output too, so it follows the open image (e.g. to the next after accept).
        self.edit_outputs = [*self.outputs, self.edit_md, self.image_dd]
        # What `show_project` fills when a project is opened: the tab emptied, the project's images listed.
        self.project_outputs = [*self.outputs[1:], self.edit_md, self.image_dd]

    # --- values ------------------------------------------------------------------------------------

    def values(self, st: UserState, view: ImageView | None, visible: list[str] | None) -> tuple[Any, ...]:
        options = class_options(self.svc, load_context(self.svc, st)) if st.project_id else []
        return label_tab(st, view, visible, options)

    def images(self, st: UserState) -> Any:
        return gr.Dropdown(choices=image_choices(self.svc, st), value=st.image_id)

    def after_edit(self, result: EditResult | AcceptResult, visible: list[str] | None) -> tuple[Any, ...]:
        if result.ok:
            gr.Info(result.message)
        else:
            gr.Warning(result.message)
        st = result.state
        view = result.view if isinstance(result, EditResult) else None
        if view is None and st.image_id is not None:
            st, view = load_image(self.svc, st)
        return (*self.values(st, view, visible), result.message, self.images(st))

    def option(self, st: UserState, label: str | None) -> ClassOption:
        return find_option(class_options(self.svc, load_context(self.svc, st)), label)

    @guarded
    def show_project(self, st: UserState) -> tuple[Any, ...]:
        """Values of `project_outputs` (the previous project's image must not stay on show)."""
        return (*self.values(st, None, None)[1:], "", self.images(st))

    @guarded
    def refresh_images(self, st: UserState) -> Any:
        return self.images(st)

    @guarded
    def refresh_classes(self, st: UserState) -> Any:
        """The class picker offers the project's class set (just saved) at once."""
        return gr.Dropdown(choices=[o.label for o in class_options(self.svc, load_context(self.svc, st))], value=None)

    # --- wiring ------------------------------------------------------------------------------------

    def wire(self, demo: gr.Blocks) -> None:
        state, toggles, outputs, edit_outputs = self.state, self.toggles, self.outputs, self.edit_outputs
        self.image_dd.input(self.on_pick_image, [state, self.image_dd, toggles], outputs, api_name="open_image")
        propose_all_event = self.propose_all_btn.click(self.on_propose_all, [state], [self.edit_md],
                                                       api_name="propose_all")
        # It can run for minutes while the user labels on; only then is the open image shown afresh,
        # from the tab's state at that moment (it may have been proposed in the batch).
        propose_all_event.then(self.on_show_current, [state, toggles], outputs)
        toggles.input(self.on_show_current, [state, toggles], outputs)
        self.segment_dd.input(self.on_select, [state, self.segment_dd, toggles], outputs, api_name="select_segment")
        self.segments_df.select(self.on_table_select, [state, toggles], outputs)
        self.annotated.select(self.on_image_click, [state, toggles], outputs)
        base = [state, toggles]
        self.changed = [
            propose_all_event,
            self.propose_btn.click(self.on_propose, base, edit_outputs, api_name="propose"),
            self.relabel_btn.click(self.on_relabel, [*base, self.segment_dd, self.class_dd], edit_outputs,
                                   api_name="relabel"),
            self.delete_btn.click(self.on_delete, [*base, self.segment_dd], edit_outputs, api_name="delete_segment"),
            self.merge_btn.click(self.on_merge, [*base, self.segment_dd, self.merge_dd], edit_outputs,
                                 api_name="merge"),
            self.apply_btn.click(self.on_apply_brush, [*base, self.segment_dd, self.editor, self.mode], edit_outputs,
                                 api_name="edit_mask"),
            self.new_btn.click(self.on_new_segment, [*base, self.editor, self.class_dd], edit_outputs,
                               api_name="add_segment"),
            self.undo_btn.click(self.on_undo, base, edit_outputs, api_name="undo"),
            self.redo_btn.click(self.on_redo, base, edit_outputs, api_name="redo"),
            self.keep_btn.click(self.on_keep_mine, base, edit_outputs, api_name="save_mine"),
            self.accept_btn.click(self.on_accept, base, edit_outputs, api_name="accept"),
            self.skip_btn.click(self.on_skip, [state], edit_outputs, api_name="skip_image"),
            self.reload_btn.click(self.on_reload, base, edit_outputs, api_name="reload"),
            self.confirm_delete_btn.click(self.on_delete_image, [state, self.delete_target],
                                          [*edit_outputs, self.confirm_delete_row, self.delete_target],
                                          api_name="delete_image"),
        ]
        # The first click remembers which image it was about; the confirmation deletes only that one.
        self.delete_image_btn.click(lambda st: (gr.Row(visible=st.image_id is not None), st.image_id), [state],
                                    [self.confirm_delete_row, self.delete_target])
        self.cancel_delete_btn.click(lambda: (gr.Row(visible=False), None), None,
                                     [self.confirm_delete_row, self.delete_target])

    # --- events ------------------------------------------------------------------------------------

    @guarded
    def on_pick_image(self, st: UserState, image_id: int | None, visible: list[str],
                      request: gr.Request) -> tuple[Any, ...]:
        if image_id is None:
            return self.values(st, None, visible)
        st, view = open_image(self.svc, st, image_id, user_name(request))
        if view.other_labeler:
            gr.Warning(f"{view.other_labeler} is labeling this image right now; your edits may clash.")
        return self.values(st, view, None)

    @guarded
    def on_propose(self, st: UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(propose(self.svc, st, user_name(request)), None)

    @guarded
    def on_propose_all(self, st: UserState, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Any:
        def report(done: int, total: int) -> None:
            progress((done, total), desc="Pre-labeling new images")

        return propose_all(self.svc, st, user_name(request), report)

    @guarded
    def on_show_current(self, st: UserState, visible: list[str]) -> tuple[Any, ...]:
        """The open image as stored now (the tab's state as it is when this runs, not when clicked)."""
        if st.image_id is None:
            return self.values(st, None, visible)
        st, view = load_image(self.svc, st)
        return self.values(st, view, visible)

    @guarded
    def on_select(self, st: UserState, segment_id: str | None, visible: list[str]) -> tuple[Any, ...]:
        st = edits.select_segment(self.svc, st, segment_id)
        st, view = load_image(self.svc, st)
        return self.values(st, view, visible)

    @guarded
    def on_table_select(self, st: UserState, visible: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
        st, view = load_image(self.svc, st)
        rows = shown(view, visible or None)
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        return self.on_select(st, rows[int(row)].id, visible)

    @guarded
    def on_image_click(self, st: UserState, visible: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
        st, view = load_image(self.svc, st)
        return self.on_select(st, shown(view, visible or None)[int(evt.index)].id, visible)

    @guarded
    def on_relabel(self, st: UserState, visible: list[str], seg: str | None, label: str | None,
                   request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.relabel(self.svc, st, user_name(request), seg, self.option(st, label)), visible)

    @guarded
    def on_delete(self, st: UserState, visible: list[str], seg: str | None, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.delete_segment(self.svc, st, user_name(request), seg), visible)

    @guarded
    def on_merge(self, st: UserState, visible: list[str], seg: str | None, other: str | None,
                 request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.merge_segments(self.svc, st, user_name(request), seg, other), visible)

    @guarded
    def on_apply_brush(self, st: UserState, visible: list[str], seg: str | None, value: dict | None, brush: str,
                       request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.edit_mask(self.svc, st, user_name(request), seg, value, brush), visible)

    @guarded
    def on_new_segment(self, st: UserState, visible: list[str], value: dict | None, label: str | None,
                       request: gr.Request) -> tuple[Any, ...]:
        result = edits.add_segment(self.svc, st, user_name(request), value, self.option(st, label))
        return self.after_edit(result, visible)

    @guarded
    def on_undo(self, st: UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.undo(self.svc, st, user_name(request)), visible)

    @guarded
    def on_redo(self, st: UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.redo(self.svc, st, user_name(request)), visible)

    @guarded
    def on_keep_mine(self, st: UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(edits.save_pending_anyway(self.svc, st, user_name(request)), visible)

    @guarded
    def on_accept(self, st: UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(accept(self.svc, st, user_name(request)), visible)

    @guarded
    def on_skip(self, st: UserState, request: gr.Request) -> tuple[Any, ...]:
        return self.after_edit(skip_image(self.svc, st, user_name(request)), None)

    @guarded
    def on_reload(self, st: UserState, visible: list[str]) -> tuple[Any, ...]:
        return self.after_edit(edits.reload_image(self.svc, st), visible)

    @guarded
    def on_delete_image(self, st: UserState, target: int | None, request: gr.Request) -> tuple[Any, ...]:
        if target is None:
            raise UserError("Click Delete image… first.")
        result = delete_image(self.svc, st, user_name(request), confirmed_image_id=target)
        return (*self.after_edit(result, None), gr.Row(visible=False), None)
