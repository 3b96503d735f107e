"""The Fine-tune tab: which model proposals use, and jobs that learn a new label space."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import gradio as gr
import pandas as pd

from app.context import UserState
from app.events import guarded
from app.finetune.jobs import (
    DEFAULT_FINETUNE_ITERATIONS,
    JOB_COLUMNS,
    MAX_FINETUNE_ITERATIONS,
    JobView,
    cancel_job,
    finetune_sources,
    jobs_report,
    start_finetune,
)
from app.finetune.models import model_choices, model_summary, use_model
from app.services import Services


def jobs_frame(jobs: Sequence[JobView]) -> pd.DataFrame:
    return pd.DataFrame([j.row for j in jobs], columns=JOB_COLUMNS)


def job_progress_html(job: JobView | None) -> str:
    """One job's status, a progress bar and its latest message."""
    if job is None:
        return "<p>No fine-tuning job yet.</p>"
    return (
        f"<div><b>Job {job.id}</b>: label space <b>{html.escape(job.space)}</b>, "
        f"<span class='job-status'>{job.status}</span>"
        f"<br><progress value='{job.progress:.3f}' max='1' style='width:100%'></progress> {job.progress:.0%}"
        f"<br>{html.escape(job.message)}</div>"
    )


class FinetuneTab:
    """Its components, and `model_changed`: a counter that changes when the project's model did."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Fine-tune", id="finetune") as self.tab:
            self.model_md = gr.Markdown(elem_id="model-summary")
            with gr.Row():
                self.model_dd = gr.Dropdown(label="Model for proposals", choices=[], elem_id="model-picker", scale=3)
                self.use_model_btn = gr.Button("Use this model", elem_id="use-model-btn", scale=1)
            gr.Markdown("Learn a **new label space** from the project's accepted segments: only its query "
                        "embeddings train, everything else stays as it is. The job runs in the background; "
                        "when it is done its model is the project's model for proposals.")
            with gr.Row():
                self.space_tb = gr.Textbox(label="New label space name", placeholder="e.g. hydrants",
                                           elem_id="finetune-space", scale=2)
                self.source_dd = gr.Dropdown(label="Learn from the accepted segments of",
                                             choices=[("adhoc", "adhoc")], value="adhoc",
                                             elem_id="finetune-source", scale=2)
                self.iterations = gr.Number(label="Iterations", value=DEFAULT_FINETUNE_ITERATIONS, precision=0,
                                            minimum=1, maximum=MAX_FINETUNE_ITERATIONS,
                                            elem_id="finetune-iterations", scale=1)
            self.finetune_btn = gr.Button("Fine-tune new label space", elem_id="finetune-btn", variant="primary")
            self.job_html = gr.HTML(job_progress_html(None), elem_id="job-progress")
            self.jobs_df = gr.Dataframe(headers=JOB_COLUMNS, interactive=False, elem_id="jobs-table", label="Jobs")
            with gr.Row():
                self.refresh_btn = gr.Button("Refresh", elem_id="jobs-refresh-btn")
                self.cancel_btn = gr.Button("Cancel running job", elem_id="cancel-job-btn", variant="stop")
            # Ticks only while a job of the project is unfinished.
            self.timer = gr.Timer(2.0, active=False)
            self.watched = gr.State(())  # ids of the unfinished jobs at the last look
            self.model_changed = gr.State(0)

    def wire(self, demo: gr.Blocks) -> None:
        inputs = [self.state, self.watched, self.source_dd, self.model_changed]
        outputs = [self.model_md, self.model_dd, self.source_dd, self.job_html, self.jobs_df, self.timer,
                   self.watched, self.model_changed]
        self.cancel_btn.click(self.on_cancel_job, inputs, outputs, api_name="cancel_job")
        self.tab.select(self.on_tab, inputs, outputs)
        self.refresh_btn.click(self.on_tab, inputs, outputs, api_name="jobs")
        self.timer.tick(self.on_tick, inputs, outputs, show_progress="hidden")
        self.finetune_btn.click(self.on_finetune, [*inputs, self.space_tb, self.iterations], outputs,
                                api_name="finetune")
        self.use_model_btn.click(self.on_use_model, [*inputs, self.model_dd], outputs, api_name="use_model")

    def values(self, st: UserState, seen: tuple[int, ...], source: str | None, changed: int,
               full: bool) -> tuple[Any, ...]:
        """Jobs and progress; with `full`, or when a watched job is done, the model choice too."""
        if st.project_id is None:
            return ("Open a project first (Projects tab).", gr.Dropdown(choices=[], value=None), gr.skip(),
                    job_progress_html(None), jobs_frame([]), gr.Timer(active=False), (), changed)
        report = jobs_report(self.svc, st, seen)
        for job in report.finished_now:
            notify = gr.Info if job.status == "done" else gr.Warning
            notify(f"Job {job.id} ({job.space}) {job.status}: {job.message}")
        model_values: tuple[Any, ...] = (gr.skip(), gr.skip())
        if full or any(job.status == "done" for job in report.finished_now):
            choices, in_use = model_choices(self.svc, st)
            model_values = (model_summary(self.svc, st), gr.Dropdown(choices=choices, value=in_use))
            changed += 1
        sources = finetune_sources(self.svc, st) if full else None
        source_value = gr.skip() if sources is None else gr.Dropdown(
            choices=sources, value=source if source in {v for _, v in sources} else sources[0][1])
        return (*model_values, source_value, job_progress_html(report.current), jobs_frame(report.jobs),
                gr.Timer(active=bool(report.unfinished)), report.unfinished, changed)

    @guarded
    def on_tab(self, st: UserState, seen: tuple[int, ...], source: str, changed: int) -> tuple[Any, ...]:
        return self.values(st, seen, source, changed, full=True)

    @guarded
    def on_tick(self, st: UserState, seen: tuple[int, ...], source: str, changed: int) -> tuple[Any, ...]:
        return self.values(st, seen, source, changed, full=False)

    @guarded
    def on_finetune(self, st: UserState, seen: tuple[int, ...], source: str, changed: int, space: str,
                    iterations: float | None) -> tuple[Any, ...]:
        job = start_finetune(self.svc, st, space, source, iterations)
        gr.Info(f"Started job {job.id}: learning label space {job.space!r} from the {source} segments.")
        return self.values(st, (*seen, job.id), source, changed, full=False)

    @guarded
    def on_use_model(self, st: UserState, seen: tuple[int, ...], source: str, changed: int,
                     version_id: int | None) -> tuple[Any, ...]:
        gr.Info(use_model(self.svc, st, version_id).replace("**", ""))
        return self.values(st, seen, source, changed, full=True)

    @guarded
    def on_cancel_job(self, st: UserState, seen: tuple[int, ...], source: str, changed: int) -> tuple[Any, ...]:
        job = cancel_job(self.svc, st)
        gr.Info(f"Job {job.id} ({job.space}) cancelled.")
        return self.values(st, seen, source, changed, full=True)
