"""The Projects tab: create or open a project, see its images, upload, export COCO."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from app.context import UserState
from app.events import guarded
from app.projects.export import export_coco
from app.projects.handlers import (
    IMAGE_COLUMNS,
    ProjectOverview,
    create_project,
    open_project,
    project_names,
    project_overview,
)
from app.projects.upload import upload_images
from app.services import Services


def images_frame(overview: ProjectOverview) -> pd.DataFrame:
    return pd.DataFrame(overview.rows, columns=IMAGE_COLUMNS)


class ProjectsTab:
    """Its components, and its events that others follow: `opened` (a project was created or opened)
    and `uploaded`."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Projects", id="projects"):
            with gr.Row():
                self.new_name = gr.Textbox(label="New project name", elem_id="project-name", scale=3)
                self.create_btn = gr.Button("Create project", elem_id="create-project-btn", scale=1)
            with gr.Row():
                self.project_dd = gr.Dropdown(label="Open a project", choices=[], elem_id="project-picker", scale=3,
                                              allow_custom_value=True)
                self.open_btn = gr.Button("Open", elem_id="open-project-btn", scale=1)
            self.summary = gr.Markdown("No project open.", elem_id="project-summary")
            self.images_df = gr.Dataframe(headers=IMAGE_COLUMNS, interactive=False, elem_id="images-table",
                                          label="Images")
            self.files = gr.File(label="Upload images or a zip of images", file_count="multiple",
                                 file_types=["image", ".zip"], elem_id="upload")
            self.upload_btn = gr.Button("Upload", elem_id="upload-btn", variant="primary")
            self.upload_md = gr.Markdown(elem_id="upload-report")
            with gr.Row():
                self.export_btn = gr.Button("Export COCO (instances + panoptic, zip)", elem_id="export-btn", scale=1)
                self.export_file = gr.File(label="COCO export", interactive=False, elem_id="export-file", scale=2)
            self.export_md = gr.Markdown(elem_id="export-report")
        self.overview_outputs = [self.summary, self.images_df]

    def overview(self, st: UserState) -> tuple[Any, ...]:
        """Values of `overview_outputs`: the summary and the images table."""
        overview = project_overview(self.svc, st)
        return overview.summary, images_frame(overview)

    def wire(self, demo: gr.Blocks) -> None:
        demo.load(self.on_load, outputs=[self.project_dd])
        outputs = [self.state, *self.overview_outputs, self.project_dd]
        self.opened = [
            self.create_btn.click(self.on_create, [self.new_name], outputs, api_name="create_project"),
            self.open_btn.click(self.on_open, [self.project_dd], outputs, api_name="open_project"),
        ]
        self.uploaded = self.upload_btn.click(self.on_upload, [self.state, self.files],
                                              [self.upload_md, *self.overview_outputs, self.files], api_name="upload")
        self.export_btn.click(self.on_export, [self.state], [self.export_file, self.export_md], api_name="export_coco")

    @guarded
    def on_load(self) -> Any:
        return gr.Dropdown(choices=project_names(self.svc))

    def _opened(self, st: UserState) -> tuple[Any, ...]:
        return (st, *self.overview(st), gr.Dropdown(choices=project_names(self.svc), value=None))

    @guarded
    def on_create(self, name: str) -> tuple[Any, ...]:
        return self._opened(create_project(self.svc, name))

    @guarded
    def on_open(self, name: str) -> tuple[Any, ...]:
        return self._opened(open_project(self.svc, name))

    @guarded
    def on_upload(self, st: UserState, paths: list[str] | None) -> tuple[Any, ...]:
        report = upload_images(self.svc, st, paths)
        if report.rejected:
            gr.Warning(f"{len(report.rejected)} file(s) rejected; see the upload report.")
        return (report.message, *self.overview(st), None)

    @guarded
    def on_export(self, st: UserState) -> tuple[Any, ...]:
        result = export_coco(self.svc, st)
        if result.skipped:
            gr.Warning("Some images are left out of a panoptic set (overlapping segments); see the export report.")
        return str(result.path), result.message

    @guarded
    def on_overview(self, st: UserState) -> tuple[Any, ...]:
        return self.overview(st)
