"""The Projects tab: create or open a project, see its images, upload, import a COCO dataset, export COCO."""

from __future__ import annotations

import types
from typing import Any

import gradio as gr
import gradio_client.utils as client_utils
import pandas as pd
from gradio.data_classes import FileData
from gradio.utils import NamedString

from app.context import UserState
from app.events import guarded, remove_uploads
from app.projects.dataset_import import import_dataset
from app.projects.export import export_coco
from app.projects.handlers import (
    IMAGE_COLUMNS,
    STATUS_FILTERS,
    create_project,
    open_project,
    project_names,
    project_overview,
)
from app.projects.thumbnails import Thumbnails
from app.projects.upload import upload_images
from app.services import Services


def _uploaded_path(component: gr.File, f: FileData) -> NamedString:
    """gr.File's preprocessing of one uploaded file (type "filepath") without its leak: Gradio 6.31 opens an
    empty NamedTemporaryFile in its cache folder for every file it hands over and never uses or removes it
    (gradio/components/file.py, `_process_single_file`). Set on the Upload component's instance: a subclass
    of a Gradio component would make Gradio write a .pyi file beside this module."""
    if component.file_types and not client_utils.is_valid_file(f.path, component.file_types):
        raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {component.file_types}")
    return NamedString(f.path)

PAGE_ROWS = 50
TABLE_COLUMNS = ["image", *IMAGE_COLUMNS]


class ProjectsTab:
    """Its components, and its events that others follow: `opened` (a project was created or opened)
    and `uploaded`. A click on a row of `images_df` opens that image (wired by app/ui.py)."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        self.thumbnails = Thumbnails(svc.files)
        with gr.Tab("Projects", id="projects") as self.tab:
            with gr.Row():
                self.new_name = gr.Textbox(label="New project name", elem_id="project-name", scale=3)
                self.create_btn = gr.Button("Create project", elem_id="create-project-btn", scale=1)
            with gr.Row():
                self.project_dd = gr.Dropdown(label="Open a project", choices=[], elem_id="project-picker", scale=3,
                                              allow_custom_value=True)
                self.open_btn = gr.Button("Open", elem_id="open-project-btn", scale=1)
            self.summary = gr.Markdown("No project open.", elem_id="project-summary")
            with gr.Row(equal_height=True):
                self.status_filter = gr.Radio([(f.replace("_", " "), f) for f in STATUS_FILTERS], value="all",
                                              label="Show images",
                                              elem_id="status-filter", scale=3)
                self.page = gr.Number(value=1, precision=0, minimum=1, label=f"Page ({PAGE_ROWS} images each)",
                                      elem_id="images-page", scale=1)
            self.images_df = gr.Dataframe(headers=TABLE_COLUMNS, datatype=["html", "number", "str", "str", "str",
                                                                            "number", "str"],
                                          interactive=False, elem_id="images-table", max_height=520,
                                          label="Images (click a row to open it on the Label tab)")
            self.files = gr.File(label="Upload images or a zip of images", file_count="multiple",
                                 file_types=["image", ".zip"], elem_id="upload")
            self.files._process_single_file = types.MethodType(_uploaded_path, self.files)  # type: ignore[method-assign]
            self.upload_btn = gr.Button("Upload", elem_id="upload-btn", variant="primary")
            self.upload_md = gr.Markdown(elem_id="upload-report")
            with gr.Row():
                self.export_btn = gr.Button("Export COCO (instances + panoptic, zip)", elem_id="export-btn", scale=1)
                self.export_file = gr.File(label="COCO export", interactive=False, elem_id="export-file", scale=2)
            self.export_md = gr.Markdown(elem_id="export-report")
            with gr.Accordion("Import a COCO or COCO panoptic dataset (as accepted annotations of a label space)",
                              open=False):
                with gr.Row():
                    self.import_json = gr.File(label="Annotations: COCO instances or panoptic JSON",
                                               file_types=[".json"], elem_id="import-json")
                    self.import_images = gr.File(label="Its images (files or a zip)", file_count="multiple",
                                                 file_types=["image", ".zip"], elem_id="import-images")
                    self.import_pngs = gr.File(label="Panoptic only: its PNGs (files or a zip)", file_count="multiple",
                                               file_types=[".png", ".zip"], elem_id="import-pngs")
                with gr.Row():
                    self.import_space = gr.Textbox(label="Label space (new or existing; empty: the JSON's name)",
                                                   elem_id="import-space", scale=3)
                    self.import_keep = gr.Checkbox(label="Keep categories without annotations as classes",
                                                   elem_id="import-keep-empty", scale=2)
                    self.import_btn = gr.Button("Import", elem_id="import-btn", scale=1)
                self.import_md = gr.Markdown(elem_id="import-report")
        self.overview_outputs = [self.summary, self.images_df, self.page]

    def overview(self, st: UserState, status: str = "all", page: float | None = 1) -> tuple[Any, ...]:
        """Values of `overview_outputs`: the summary, one page of the images table, the page number."""
        overview = project_overview(self.svc, st, status if status in STATUS_FILTERS else "all", int(page or 1),
                                    PAGE_ROWS)
        rows = [[self.thumbnails.tag(sha, row[1]), *row] for sha, row in zip(overview.sha256, overview.rows,
                                                                              strict=True)]
        page_value = gr.Number(value=min(max(int(page or 1), 1), overview.pages), maximum=overview.pages,
                               label=f"Page of {overview.pages} ({PAGE_ROWS} images each)")
        return overview.summary, pd.DataFrame(rows, columns=TABLE_COLUMNS), page_value

    def wire(self, demo: gr.Blocks) -> None:
        self.upload_root = demo.GRADIO_CACHE  # where Gradio keeps uploads until on_upload removes them
        demo.load(self.on_load, outputs=[self.project_dd])
        # Projects someone else created since the page loaded are offered too.
        self.project_dd.focus(self.on_load, outputs=[self.project_dd], show_progress="hidden")
        table_inputs = [self.state, self.status_filter, self.page]
        for event in (self.tab.select, self.status_filter.input, self.page.submit):
            event(self.on_overview, table_inputs, self.overview_outputs, show_progress="hidden")
        outputs = [self.state, *self.overview_outputs, self.project_dd, self.status_filter]
        self.opened = [
            self.create_btn.click(self.on_create, [self.new_name], outputs, api_name="create_project"),
            self.open_btn.click(self.on_open, [self.project_dd], outputs, api_name="open_project"),
        ]
        self.uploaded = self.upload_btn.click(self.on_upload, [*table_inputs, self.files],
                                              [self.upload_md, *self.overview_outputs, self.files], api_name="upload")
        self.export_btn.click(self.on_export, [self.state], [self.export_file, self.export_md], api_name="export_coco")
        self.imported = self.import_btn.click(
            self.on_import, [*table_inputs, self.import_json, self.import_images, self.import_pngs, self.import_space,
                             self.import_keep], [self.import_md, *self.overview_outputs], api_name="import_dataset")

    @guarded
    def on_load(self) -> Any:
        return gr.Dropdown(choices=project_names(self.svc))

    def _opened(self, st: UserState) -> tuple[Any, ...]:
        return (st, *self.overview(st), gr.Dropdown(choices=project_names(self.svc), value=None), "all")

    @guarded
    def on_create(self, name: str) -> tuple[Any, ...]:
        return self._opened(create_project(self.svc, name))

    @guarded
    def on_open(self, name: str) -> tuple[Any, ...]:
        return self._opened(open_project(self.svc, name))

    @guarded
    def on_upload(self, st: UserState, status: str, page: float | None, paths: list[str] | None) -> tuple[Any, ...]:
        report = upload_images(self.svc, st, paths)
        remove_uploads(paths, self.upload_root)  # each file is stored or refused: the temporary copy can go
        if report.rejected:
            gr.Warning(f"{len(report.rejected)} file(s) rejected; see the upload report.")
        return (report.message, *self.overview(st, status, page), None)

    @guarded
    def on_export(self, st: UserState) -> tuple[Any, ...]:
        result = export_coco(self.svc, st)
        if result.overlaps:
            gr.Warning("Some segments overlap inside a label space; the panoptic sets gave the shared pixels "
                       "to the smaller mask (see the export report).")
        return str(result.path), result.message

    @guarded
    def on_import(self, st: UserState, status: str, page: float | None, annotations: str | None,
                  images: list[str] | None, pngs: list[str] | None, space: str, keep_empty: bool) -> tuple[Any, ...]:
        try:
            result = import_dataset(self.svc, st, annotations, images, pngs, space or "", bool(keep_empty))
        finally:  # imported or refused, Gradio's temporary copies can go
            remove_uploads([p for p in (annotations, *(images or []), *(pngs or [])) if p], self.upload_root)
        return (result.message, *self.overview(st, status, page))

    @guarded
    def on_overview(self, st: UserState, status: str, page: float | None) -> tuple[Any, ...]:
        if st.project_id is None:
            return gr.skip()
        return self.overview(st, status, page)
