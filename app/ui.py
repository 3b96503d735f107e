"""The Gradio layout and its wiring. Each event calls one handler through `app.events`; no logic lives here."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app import handlers as h
from app.config import AppConfig
from app.editing import BrushMode
from app.events import (
    LABEL_OUTPUTS,
    guarded,
    image_choices,
    images_frame,
    job_progress_html,
    jobs_frame,
    label_tab,
    quality_frames,
    shown,
    user_name,
)
from app.render import SEGMENT_COLUMNS
from app.services import Services, UserError

# Keyboard shortcuts click the Label tab's buttons by elem_id while that tab is shown; keys typed into a
# text field are left alone.
SHORTCUTS_JS = """
<script>
document.addEventListener('keydown', (event) => {
  const t = event.target;
  if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) return;
  const ctrl = event.ctrlKey || event.metaKey;
  let id = null;
  if (ctrl && event.key.toLowerCase() === 'z') id = event.shiftKey ? 'redo-btn' : 'undo-btn';
  else if (ctrl && event.key.toLowerCase() === 'y') id = 'redo-btn';
  else if (!ctrl && event.key === 'Enter' && event.shiftKey) id = 'accept-btn';
  else if (!ctrl && (event.key === 'Delete' || event.key === 'Backspace')) id = 'delete-btn';
  if (!id) return;
  const button = document.getElementById(id);
  // Only on the Label tab: Gradio keeps hidden tabs in the page (display: none), so their buttons
  // would still take clicks. A button on a hidden tab has no layout boxes.
  if (button && !button.disabled && button.getClientRects().length > 0) { event.preventDefault(); button.click(); }
});
</script>
"""

HELP = (
    "Steps: **Projects** (create/open, upload) → **Class set** → **Label** (propose, correct, accept) → "
    "**Quality**; **Fine-tune** learns a new label space from accepted segments. Shortcuts on the Label tab: Shift+Enter accept & next, Ctrl+Z undo, Ctrl+Y redo, "
    "Delete removes the selected segment."
)


def launch_kwargs(config: AppConfig) -> dict[str, Any]:
    """Arguments of `Blocks.launch` that follow from the config (launch.py adds the rest)."""
    return {
        "server_name": config.host,
        "server_port": config.port,
        "auth": list(config.auth) or None,
        "max_file_size": config.max_upload_bytes,
        "ssr_mode": False,
        "show_error": False,
        "head": SHORTCUTS_JS,
        "allowed_paths": [str(config.export_dir.resolve())],
    }


def build_ui(svc: Services) -> gr.Blocks:
    with gr.Blocks(title="RESI labeling") as demo:
        state = gr.State(h.UserState())
        class_set_id = gr.State(None)  # the class set the Class set tab was loaded with (save checks it)
        delete_target = gr.State(None)  # the image "Delete image…" was clicked for
        gr.Markdown("# RESI: model-assisted segmentation labeling\n" + HELP)
        with gr.Tabs():
            with gr.Tab("Projects", id="projects"):
                with gr.Row():
                    new_name = gr.Textbox(label="New project name", elem_id="project-name", scale=3)
                    create_btn = gr.Button("Create project", elem_id="create-project-btn", scale=1)
                with gr.Row():
                    project_dd = gr.Dropdown(label="Open a project", choices=[], elem_id="project-picker", scale=3,
                                             allow_custom_value=True)
                    open_btn = gr.Button("Open", elem_id="open-project-btn", scale=1)
                summary = gr.Markdown("No project open.", elem_id="project-summary")
                images_df = gr.Dataframe(headers=h.IMAGE_COLUMNS, interactive=False, elem_id="images-table",
                                         label="Images")
                files = gr.File(label="Upload images or a zip of images", file_count="multiple",
                                file_types=["image", ".zip"], elem_id="upload")
                upload_btn = gr.Button("Upload", elem_id="upload-btn", variant="primary")
                upload_md = gr.Markdown(elem_id="upload-report")
                with gr.Row():
                    export_btn = gr.Button("Export COCO (instances + panoptic, zip)", elem_id="export-btn", scale=1)
                    export_file = gr.File(label="COCO export", interactive=False, elem_id="export-file", scale=2)
                export_md = gr.Markdown(elem_id="export-report")
            with gr.Tab("Class set", id="classes"):
                spaces_cb = gr.CheckboxGroup(label="Label spaces the model was trained on", choices=[],
                                             elem_id="label-spaces")
                adhoc_tb = gr.Textbox(label="Ad-hoc classes, comma-separated", elem_id="adhoc-classes",
                                      placeholder="e.g. cat, dog, traffic cone")
                suggest_btn = gr.Button("Suggest synonyms", elem_id="suggest-btn")
                synonyms_cb = gr.CheckboxGroup(label="Suggested synonyms: tick the pairs that are one class",
                                               choices=[], elem_id="synonyms")
                save_cs_btn = gr.Button("Save class set", elem_id="save-class-set-btn", variant="primary")
                class_set_md = gr.Markdown(elem_id="class-set-summary")
            with gr.Tab("Label", id="label"):
                with gr.Row():
                    image_dd = gr.Dropdown(label="Image", choices=[], elem_id="image-picker", scale=3,
                                           allow_custom_value=True)
                    propose_btn = gr.Button("Propose", elem_id="propose-btn", variant="primary", scale=1)
                    propose_all_btn = gr.Button("Propose all new", elem_id="propose-all-btn", scale=1)
                    skip_btn = gr.Button("Skip →", elem_id="skip-btn", scale=1)
                    delete_image_btn = gr.Button("Delete image…", elem_id="delete-image-btn", scale=1)
                with gr.Row(visible=False) as confirm_delete_row:  # a second click, so one slip deletes nothing
                    gr.Markdown("Delete this image with its segments, history and PIQ records? This cannot be undone.")
                    confirm_delete_btn = gr.Button("Yes, delete the image", elem_id="confirm-delete-image-btn",
                                                   variant="stop")
                    cancel_delete_btn = gr.Button("Keep it", elem_id="cancel-delete-image-btn")
                title_md = gr.Markdown("No image open.", elem_id="image-title")
                with gr.Row():
                    with gr.Column(scale=3):
                        annotated = gr.AnnotatedImage(label="Segments", elem_id="annotated")
                        toggles = gr.CheckboxGroup(label="Show label spaces", choices=[], elem_id="space-toggles")
                        segments_df = gr.Dataframe(headers=SEGMENT_COLUMNS, interactive=False,
                                                   elem_id="segments-table", label="Segments")
                    with gr.Column(scale=2):
                        segment_dd = gr.Dropdown(label="Selected segment", choices=[], elem_id="segment-picker")
                        class_dd = gr.Dropdown(label="Class", choices=[], elem_id="class-picker")
                        with gr.Row():
                            relabel_btn = gr.Button("Relabel", elem_id="relabel-btn")
                            delete_btn = gr.Button("Delete", elem_id="delete-btn", variant="stop")
                        with gr.Row():
                            merge_dd = gr.Dropdown(label="Merge with", choices=[], elem_id="merge-picker")
                            merge_btn = gr.Button("Merge", elem_id="merge-btn")
                        editor = gr.ImageEditor(label="Brush", elem_id="editor", sources=(), transforms=(),
                                                layers=False, brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed"),
                                                type="numpy", height=420)
                        mode = gr.Radio([m.value for m in BrushMode], value=BrushMode.ADD.value, label="Brush",
                                        elem_id="brush-mode")
                        with gr.Row():
                            apply_btn = gr.Button("Apply brush to segment", elem_id="apply-brush-btn")
                            new_btn = gr.Button("New segment from brush", elem_id="new-segment-btn")
                        with gr.Row():
                            undo_btn = gr.Button("Undo", elem_id="undo-btn", interactive=False)
                            redo_btn = gr.Button("Redo", elem_id="redo-btn", interactive=False)
                            accept_btn = gr.Button("Accept & next", elem_id="accept-btn", variant="primary")
                        with gr.Row():
                            keep_btn = gr.Button("Save mine anyway", elem_id="keep-mine-btn")
                            reload_btn = gr.Button("Reload", elem_id="reload-btn")
                        edit_md = gr.Markdown(elem_id="edit-message")
            with gr.Tab("Quality", id="quality") as quality_tab:
                refresh_btn = gr.Button("Refresh", elem_id="quality-refresh-btn")
                quality_md = gr.Markdown(elem_id="quality-summary")
                piq_plot = gr.ScatterPlot(x="time", y="piq", color="model", label="PIQ of each accepted proposal over time",
                                       elem_id="piq-plot", y_lim=[0, 1])
                model_plot = gr.BarPlot(x="model", y="mean_piq", label="Mean PIQ per model version",
                                        elem_id="model-plot", y_lim=[0, 1])
            with gr.Tab("Fine-tune", id="finetune") as finetune_tab:
                model_md = gr.Markdown(elem_id="model-summary")
                with gr.Row():
                    model_dd = gr.Dropdown(label="Model for proposals", choices=[], elem_id="model-picker", scale=3)
                    use_model_btn = gr.Button("Use this model", elem_id="use-model-btn", scale=1)
                gr.Markdown("Learn a **new label space** from the project's accepted segments: only its query "
                            "embeddings train, everything else stays as it is. The job runs in the background; "
                            "when it is done its model is the project's model for proposals.")
                with gr.Row():
                    ft_space = gr.Textbox(label="New label space name", placeholder="e.g. hydrants",
                                          elem_id="finetune-space", scale=2)
                    ft_source = gr.Dropdown(label="Learn from the accepted segments of",
                                            choices=[("adhoc", "adhoc")], value="adhoc",
                                            elem_id="finetune-source", scale=2)
                    ft_iterations = gr.Number(label="Iterations", value=h.DEFAULT_FINETUNE_ITERATIONS, precision=0,
                                              minimum=1, maximum=h.MAX_FINETUNE_ITERATIONS,
                                              elem_id="finetune-iterations", scale=1)
                finetune_btn = gr.Button("Fine-tune new label space", elem_id="finetune-btn", variant="primary")
                job_html = gr.HTML(job_progress_html(None), elem_id="job-progress")
                jobs_df = gr.Dataframe(headers=h.JOB_COLUMNS, interactive=False, elem_id="jobs-table", label="Jobs")
                with gr.Row():
                    jobs_refresh_btn = gr.Button("Refresh", elem_id="jobs-refresh-btn")
                    cancel_job_btn = gr.Button("Cancel running job", elem_id="cancel-job-btn", variant="stop")
                # Ticks only while a job of the project is unfinished.
                job_timer = gr.Timer(2.0, active=False)
                watched = gr.State(())  # ids of the unfinished jobs at the last look

        label_outputs = [state, annotated, segments_df, segment_dd, merge_dd, editor, toggles, class_dd,
                         undo_btn, redo_btn, title_md]
        assert len(label_outputs) == LABEL_OUTPUTS

        def project_values(st: h.UserState) -> tuple[Any, ...]:
            overview = h.project_overview(svc, st)
            return (overview.summary, images_frame(overview),
                    gr.Dropdown(choices=image_choices(overview), value=st.image_id))

        def label_values(st: h.UserState, view: h.ImageView | None, visible: list[str] | None) -> tuple[Any, ...]:
            return label_tab(st, view, visible, h.class_options(svc, st) if st.project_id else [])

        def after_edit(result: h.EditResult | h.AcceptResult, visible: list[str] | None) -> tuple[Any, ...]:
            if result.ok:
                gr.Info(result.message)
            else:
                gr.Warning(result.message)
            st = result.state
            view = getattr(result, "view", None)
            if view is None and st.image_id is not None:
                st, view = h.load_image(svc, st)
            return (*label_values(st, view, visible), result.message, *project_values(st))

        # The image picker is an output too, so it follows the open image (e.g. to the next after accept).
        edit_outputs = [*label_outputs, edit_md, summary, images_df, image_dd]

        @guarded
        def on_load() -> tuple[Any, ...]:
            spaces = [s.name for s in h.trained_spaces(svc)] if svc.model.available else []
            return gr.Dropdown(choices=h.project_names(svc)), gr.CheckboxGroup(choices=spaces)

        demo.load(on_load, outputs=[project_dd, spaces_cb])

        def spaces_update(st: h.UserState, ticked: list[str] | None) -> Any:
            """The label spaces of the project's model as choices; ticks of other spaces are dropped."""
            try:
                names = [s.name for s in h.trained_spaces(svc, st)]
            except UserError as exc:
                gr.Warning(str(exc))
                return gr.skip()
            return gr.CheckboxGroup(choices=names, value=[n for n in ticked or [] if n in names])

        def class_set_values(st: h.UserState) -> tuple[Any, ...]:
            """Class set tab: spaces, typed classes, summary, and the id of the set the tab starts from."""
            choice = h.current_class_set(svc, st)
            if choice is None:
                return (spaces_update(st, []), "",
                        "No class set yet: tick label spaces and/or type class names, then save.", None)
            return (spaces_update(st, list(choice.label_spaces)), ", ".join(choice.adhoc),
                    f"Class set: {choice.summary}.", choice.id)

        def opened(st: h.UserState) -> tuple[Any, ...]:
            # The Label tab is emptied too: the previous project's image must not stay on show.
            return (st, *project_values(st), gr.Dropdown(choices=h.project_names(svc), value=None),
                    *class_set_values(st), *label_values(st, None, None)[1:], "")

        project_outputs = [state, summary, images_df, image_dd, project_dd, spaces_cb, adhoc_tb, class_set_md,
                           class_set_id, *label_outputs[1:], edit_md]

        @guarded
        def on_create(name: str) -> tuple[Any, ...]:
            return opened(h.create_project(svc, name))

        @guarded
        def on_open(name: str) -> tuple[Any, ...]:
            return opened(h.open_project(svc, name))

        create_btn.click(on_create, [new_name], project_outputs, api_name="create_project")
        open_btn.click(on_open, [project_dd], project_outputs, api_name="open_project")

        @guarded
        def on_upload(st: h.UserState, paths: list[str] | None) -> tuple[Any, ...]:
            report = h.upload_images(svc, st, paths)
            if report.rejected:
                gr.Warning(f"{len(report.rejected)} file(s) rejected; see the upload report.")
            return (report.message, *project_values(st), None)

        upload_btn.click(on_upload, [state, files], [upload_md, summary, images_df, image_dd, files],
                         api_name="upload")

        @guarded
        def on_export(st: h.UserState) -> tuple[Any, ...]:
            result = h.export_coco(svc, st)
            if result.overlaps:
                gr.Warning("Some segments overlap inside a label space; the panoptic sets gave the shared pixels "
                           "to the smaller mask (see the export report).")
            return str(result.path), result.message

        export_btn.click(on_export, [state], [export_file, export_md], api_name="export_coco")

        @guarded
        def on_suggest(st: h.UserState, spaces: list[str], adhoc: str) -> Any:
            suggestions = h.suggest_synonyms(svc, spaces or [], adhoc, state=st)
            if not suggestions:
                gr.Info("No synonyms suggested: no two classes of different spaces are alike enough.")
            return gr.CheckboxGroup(choices=[s.label for s in suggestions], value=[])

        suggest_btn.click(on_suggest, [state, spaces_cb, adhoc_tb], [synonyms_cb], api_name="suggest_synonyms")

        @guarded
        def on_save_class_set(st: h.UserState, spaces: list[str], adhoc: str, ticked: list[str],
                              based_on: int | None) -> tuple[str, int | None]:
            confirmed = [s for s in h.suggest_synonyms(svc, spaces or [], adhoc, state=st)
                         if s.label in (ticked or [])] if ticked else []
            choice = h.save_class_set(svc, st, spaces, adhoc, confirmed, based_on=based_on)
            gr.Info("Class set saved.")
            # The Label tab's class picker offers the new set's classes at once.
            classes = gr.Dropdown(choices=[o.label for o in h.class_options(svc, st)], value=None)
            return f"Class set: {choice.summary}.", choice.id, classes

        save_cs_btn.click(on_save_class_set, [state, spaces_cb, adhoc_tb, synonyms_cb, class_set_id],
                          [class_set_md, class_set_id, class_dd], api_name="save_class_set")

        @guarded
        def on_pick_image(st: h.UserState, image_id: int | None, visible: list[str],
                          request: gr.Request) -> tuple[Any, ...]:
            if image_id is None:
                return label_values(st, None, visible)
            st, view = h.open_image(svc, st, image_id, user_name(request))
            if view.other_labeler:
                gr.Warning(f"{view.other_labeler} is labeling this image right now; your edits may clash.")
            return label_values(st, view, None)

        image_dd.input(on_pick_image, [state, image_dd, toggles], label_outputs, api_name="open_image")

        @guarded
        def on_propose(st: h.UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.propose(svc, st, user_name(request)), None)

        propose_btn.click(on_propose, [state, toggles], edit_outputs, api_name="propose")

        @guarded
        def on_propose_all(st: h.UserState, request: gr.Request, progress: gr.Progress = gr.Progress()) -> Any:
            def report(done: int, total: int) -> None:
                progress((done, total), desc="Pre-labeling new images")

            message = h.propose_all(svc, st, user_name(request), report)
            return (message, *project_values(st)[:2])

        @guarded
        def on_show_current(st: h.UserState, visible: list[str]) -> tuple[Any, ...]:
            """The open image as stored now (the tab's state as it is when this runs, not when clicked)."""
            if st.image_id is None:
                return label_values(st, None, visible)
            st, view = h.load_image(svc, st)
            return label_values(st, view, visible)

        # It can run for minutes while the user labels on; only then is the open image shown afresh,
        # from the tab's state at that moment (it may have been proposed in the batch).
        propose_all_btn.click(on_propose_all, [state], [edit_md, summary, images_df],
                              api_name="propose_all").then(on_show_current, [state, toggles], label_outputs)

        @guarded
        def on_toggle(st: h.UserState, visible: list[str]) -> tuple[Any, ...]:
            if st.image_id is None:
                return label_values(st, None, visible)
            st, view = h.load_image(svc, st)
            return label_values(st, view, visible)

        toggles.input(on_toggle, [state, toggles], label_outputs)

        @guarded
        def on_select(st: h.UserState, segment_id: str | None, visible: list[str]) -> tuple[Any, ...]:
            st = h.select_segment(svc, st, segment_id)
            st, view = h.load_image(svc, st)
            return label_values(st, view, visible)

        segment_dd.input(on_select, [state, segment_dd, toggles], label_outputs, api_name="select_segment")

        @guarded
        def on_table_select(st: h.UserState, visible: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
            st, view = h.load_image(svc, st)
            rows = shown(view, visible or None)
            row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
            return on_select(st, rows[int(row)].id, visible)

        segments_df.select(on_table_select, [state, toggles], label_outputs)

        @guarded
        def on_image_click(st: h.UserState, visible: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
            st, view = h.load_image(svc, st)
            return on_select(st, shown(view, visible or None)[int(evt.index)].id, visible)

        annotated.select(on_image_click, [state, toggles], label_outputs)

        def options(st: h.UserState, label: str | None) -> h.ClassOption:
            return h.find_option(h.class_options(svc, st), label)

        @guarded
        def on_relabel(st: h.UserState, visible: list[str], seg: str | None, label: str | None,
                       request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.relabel(svc, st, user_name(request), seg, options(st, label)), visible)

        @guarded
        def on_delete(st: h.UserState, visible: list[str], seg: str | None, request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.delete_segment(svc, st, user_name(request), seg), visible)

        @guarded
        def on_merge(st: h.UserState, visible: list[str], seg: str | None, other: str | None,
                     request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.merge_segments(svc, st, user_name(request), seg, other), visible)

        @guarded
        def on_apply_brush(st: h.UserState, visible: list[str], seg: str | None, value: dict | None, brush: str,
                           request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.edit_mask(svc, st, user_name(request), seg, value, brush), visible)

        @guarded
        def on_new_segment(st: h.UserState, visible: list[str], value: dict | None, label: str | None,
                           request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.add_segment(svc, st, user_name(request), value, options(st, label)), visible)

        @guarded
        def on_undo(st: h.UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.undo(svc, st, user_name(request)), visible)

        @guarded
        def on_redo(st: h.UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.redo(svc, st, user_name(request)), visible)

        @guarded
        def on_keep_mine(st: h.UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.save_pending_anyway(svc, st, user_name(request)), visible)

        @guarded
        def on_accept(st: h.UserState, visible: list[str], request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.accept(svc, st, user_name(request)), visible)

        base = [state, toggles]
        relabel_btn.click(on_relabel, [*base, segment_dd, class_dd], edit_outputs, api_name="relabel")
        delete_btn.click(on_delete, [*base, segment_dd], edit_outputs, api_name="delete_segment")
        merge_btn.click(on_merge, [*base, segment_dd, merge_dd], edit_outputs, api_name="merge")
        apply_btn.click(on_apply_brush, [*base, segment_dd, editor, mode], edit_outputs, api_name="edit_mask")
        new_btn.click(on_new_segment, [*base, editor, class_dd], edit_outputs, api_name="add_segment")
        undo_btn.click(on_undo, base, edit_outputs, api_name="undo")
        redo_btn.click(on_redo, base, edit_outputs, api_name="redo")
        keep_btn.click(on_keep_mine, base, edit_outputs, api_name="save_mine")
        accept_btn.click(on_accept, base, edit_outputs, api_name="accept")

        # The first click remembers which image it was about; the confirmation deletes only that one.
        delete_image_btn.click(lambda st: (gr.Row(visible=st.image_id is not None), st.image_id), [state],
                               [confirm_delete_row, delete_target])
        cancel_delete_btn.click(lambda: (gr.Row(visible=False), None), None, [confirm_delete_row, delete_target])

        @guarded
        def on_delete_image(st: h.UserState, target: int | None, request: gr.Request) -> tuple[Any, ...]:
            if target is None:
                raise UserError("Click Delete image… first.")
            result = h.delete_image(svc, st, user_name(request), confirmed_image_id=target)
            return (*after_edit(result, None), gr.Row(visible=False), None)

        confirm_delete_btn.click(on_delete_image, [state, delete_target],
                                 [*edit_outputs, confirm_delete_row, delete_target], api_name="delete_image")

        @guarded
        def on_skip(st: h.UserState, request: gr.Request) -> tuple[Any, ...]:
            return after_edit(h.skip_image(svc, st, user_name(request)), None)

        skip_btn.click(on_skip, [state], edit_outputs, api_name="skip_image")

        @guarded
        def on_reload(st: h.UserState, visible: list[str]) -> tuple[Any, ...]:
            return after_edit(h.reload_image(svc, st), visible)

        reload_btn.click(on_reload, [state, toggles], edit_outputs, api_name="reload")

        @guarded
        def on_quality(st: h.UserState) -> tuple[Any, ...]:
            report = h.quality(svc, st)
            over_time, per_model = quality_frames(report)
            return report.summary, over_time, per_model

        quality_outputs = [quality_md, piq_plot, model_plot]
        refresh_btn.click(on_quality, [state], quality_outputs, api_name="quality")
        quality_tab.select(on_quality, [state], quality_outputs)

        def finetune_values(st: h.UserState, seen: tuple[int, ...], ticked: list[str] | None, source: str | None,
                            full: bool) -> tuple[Any, ...]:
            """Jobs and progress; with `full`, or when a watched job is done, the model choice too."""
            if st.project_id is None:
                return ("Open a project first (Projects tab).", gr.Dropdown(choices=[], value=None), gr.skip(),
                        job_progress_html(None), jobs_frame([]), gr.Timer(active=False), (), gr.skip())
            report = h.jobs_report(svc, st, seen)
            for job in report.finished_now:
                notify = gr.Info if job.status == "done" else gr.Warning
                notify(f"Job {job.id} ({job.space}) {job.status}: {job.message}")
            model_values: tuple[Any, ...] = (gr.skip(), gr.skip(), gr.skip())
            if full or any(job.status == "done" for job in report.finished_now):
                choices, in_use = h.model_choices(svc, st)
                model_values = (h.model_summary(svc, st), gr.Dropdown(choices=choices, value=in_use),
                                spaces_update(st, ticked))
            sources = h.finetune_sources(svc, st) if full else None
            source_value = gr.skip() if sources is None else gr.Dropdown(
                choices=sources, value=source if source in {v for _, v in sources} else sources[0][1])
            return (*model_values[:2], source_value, job_progress_html(report.current), jobs_frame(report.jobs),
                    gr.Timer(active=bool(report.unfinished)), report.unfinished, model_values[2])

        finetune_inputs = [state, watched, spaces_cb, ft_source]
        finetune_outputs = [model_md, model_dd, ft_source, job_html, jobs_df, job_timer, watched, spaces_cb]

        @guarded
        def on_finetune_tab(st: h.UserState, seen: tuple[int, ...], ticked: list[str], source: str) -> tuple[Any, ...]:
            return finetune_values(st, seen, ticked, source, full=True)

        @guarded
        def on_job_tick(st: h.UserState, seen: tuple[int, ...], ticked: list[str], source: str) -> tuple[Any, ...]:
            return finetune_values(st, seen, ticked, source, full=False)

        @guarded
        def on_finetune(st: h.UserState, seen: tuple[int, ...], ticked: list[str], source: str, space: str,
                        iterations: float | None) -> tuple[Any, ...]:
            job = h.start_finetune(svc, st, space, source, iterations)
            gr.Info(f"Started job {job.id}: learning label space {job.space!r} from the {source} segments.")
            return finetune_values(st, (*seen, job.id), ticked, source, full=False)

        @guarded
        def on_use_model(st: h.UserState, seen: tuple[int, ...], ticked: list[str], source: str,
                         version_id: int | None) -> tuple[Any, ...]:
            gr.Info(h.use_model(svc, st, version_id).replace("**", ""))
            return finetune_values(st, seen, ticked, source, full=True)

        @guarded
        def on_cancel_job(st: h.UserState, seen: tuple[int, ...], ticked: list[str], source: str) -> tuple[Any, ...]:
            job = h.cancel_job(svc, st)
            gr.Info(f"Job {job.id} ({job.space}) cancelled.")
            return finetune_values(st, seen, ticked, source, full=True)

        cancel_job_btn.click(on_cancel_job, finetune_inputs, finetune_outputs, api_name="cancel_job")
        finetune_tab.select(on_finetune_tab, finetune_inputs, finetune_outputs)
        jobs_refresh_btn.click(on_finetune_tab, finetune_inputs, finetune_outputs, api_name="jobs")
        job_timer.tick(on_job_tick, finetune_inputs, finetune_outputs, show_progress="hidden")
        finetune_btn.click(on_finetune, [*finetune_inputs, ft_space, ft_iterations], finetune_outputs,
                           api_name="finetune")
        use_model_btn.click(on_use_model, [*finetune_inputs, model_dd], finetune_outputs, api_name="use_model")
    return demo
