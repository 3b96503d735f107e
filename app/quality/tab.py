"""The Quality tab: PIQ of accepted proposals over time and per model version."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.context import UserState
from app.events import guarded
from app.quality.handlers import quality, quality_frames
from app.services import Services


class QualityTab:
    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Quality", id="quality") as self.tab:
            self.refresh_btn = gr.Button("Refresh", elem_id="quality-refresh-btn")
            self.summary_md = gr.Markdown(elem_id="quality-summary")
            self.piq_plot = gr.ScatterPlot(x="time", y="piq", color="model",
                                           label="PIQ of each accepted proposal over time", elem_id="piq-plot",
                                           y_lim=[0, 1])
            self.model_plot = gr.BarPlot(x="model", y="mean_piq", label="Mean PIQ per model version",
                                         elem_id="model-plot", y_lim=[0, 1])

    def wire(self, demo: gr.Blocks) -> None:
        outputs = [self.summary_md, self.piq_plot, self.model_plot]
        self.refresh_btn.click(self.on_quality, [self.state], outputs, api_name="quality")
        self.tab.select(self.on_quality, [self.state], outputs)

    @guarded
    def on_quality(self, st: UserState) -> tuple[Any, ...]:
        report = quality(self.svc, st)
        over_time, per_model = quality_frames(report)
        return report.summary, over_time, per_model
