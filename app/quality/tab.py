"""The Quality tab: PIQ of accepted proposals over time and per model version."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.context import UserState
from app.events import guarded
from app.quality.handlers import quality, quality_frames
from app.services import Services

PIQ_AXIS = [-0.05, 1.05]  # PIQ is in [0, 1]; a point at 0 or 1 is drawn whole


class QualityTab:
    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Quality", id="quality") as self.tab:
            self.refresh_btn = gr.Button("Refresh", elem_id="quality-refresh-btn")
            self.summary_md = gr.Markdown(elem_id="quality-summary")
            self.piq_plot = gr.ScatterPlot(x="accepted", y="piq", color="model", y_lim=PIQ_AXIS,
                                           x_title="accepted image (in the order accepted)", tooltip="all",
                                           label="PIQ of each accepted proposal over time", elem_id="piq-plot")
            self.model_plot = gr.BarPlot(x="model", y="mean_piq", label="Mean PIQ per model version",
                                         elem_id="model-plot", y_lim=[0, 1.05])

    def wire(self, demo: gr.Blocks) -> None:
        outputs = [self.summary_md, self.piq_plot, self.model_plot]
        self.refresh_btn.click(self.on_quality, [self.state], outputs, api_name="quality")
        self.tab.select(self.on_quality, [self.state], outputs)

    @guarded
    def on_quality(self, st: UserState) -> tuple[Any, ...]:
        report = quality(self.svc, st)
        over_time, per_model = quality_frames(report)
        # The axes reach half a step beyond the points: gradio clips a mark at the edge of the plot.
        points = gr.ScatterPlot(value=over_time, x_lim=[0.5, len(over_time) + 0.5], y_lim=PIQ_AXIS)
        return report.summary, points, per_model
