"""The Label tab's components, laid out for a 1280x1000 screen: the actions and the status line on top,
the picture on the left (click a segment to select it), the selected segment's tools on the right."""

from __future__ import annotations

import gradio as gr

from app.labeling.view import NOTHING_SELECTED, SEGMENT_COLUMNS
from app.render import OVERLAY_ALPHA


def brush(size: int | str = "auto") -> gr.Brush:
    """The one brush: one color that stands out on photos; `size` is its radius in the picture's pixels."""
    return gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=size)


class LabelLayout:
    def __init__(self, state: gr.State):
        self.state = state
        with gr.Tab("Label", id="label"):
            self.delete_target = gr.State(None)  # the image "Delete image…" was clicked for
            self.editor_key = gr.State(None)  # (image, version, selection) the brush picture shows
            self.brush_open = gr.State(False)  # whether the brush panel is open (its picture is kept up to date)
            top = {"size": "sm", "scale": 1, "min_width": 90}  # the top row's buttons fit one line at 1280 px
            with gr.Row(equal_height=True):
                self.image_dd = gr.Dropdown(show_label=False, choices=[], elem_id="image-picker", scale=3,
                                            allow_custom_value=True, container=False, min_width=220)
                self.propose_btn = gr.Button("Propose", elem_id="propose-btn", variant="primary", **top)
                self.propose_all_btn = gr.Button("Propose all new", elem_id="propose-all-btn", **top)
                self.undo_btn = gr.Button("Undo", elem_id="undo-btn", interactive=False, **top)
                self.redo_btn = gr.Button("Redo", elem_id="redo-btn", interactive=False, **top)
                self.accept_btn = gr.Button("Accept & next", elem_id="accept-btn", variant="primary", **top)
                self.skip_btn = gr.Button("Skip →", elem_id="skip-btn", **top)
                self.delete_image_btn = gr.Button("Delete image…", elem_id="delete-image-btn", **top)
            with gr.Row(visible=False) as self.confirm_delete_row:  # a second click, so one slip deletes nothing
                gr.Markdown("Delete this image with its segments, history and PIQ records? This cannot be undone.")
                self.confirm_delete_btn = gr.Button("Yes, delete the image", elem_id="confirm-delete-image-btn",
                                                    variant="stop")
                self.cancel_delete_btn = gr.Button("Keep it", elem_id="cancel-delete-image-btn")
            with gr.Row(visible=False) as self.accept_empty_row:  # an empty image is accepted on purpose only
                gr.Markdown("This image has no segments. Accept it as an image with nothing to label?")
                self.accept_empty_btn = gr.Button("Yes, accept it empty", elem_id="accept-empty-btn",
                                                  variant="primary")
                self.cancel_empty_btn = gr.Button("No, keep labeling", elem_id="cancel-empty-btn")
            self.title_md = gr.Markdown("No image open.", elem_id="image-title")
            # The last event's message (the toasts go away; this stays until the next one).
            self.message_md = gr.Markdown(elem_id="edit-message")
            with gr.Row():
                with gr.Column(scale=3):
                    self.overview = gr.Image(label="Segments: click one to select it, click again for the one under it",
                                             elem_id="overview", interactive=False, type="numpy", format="jpeg",
                                             height=470, buttons=["fullscreen"])
                    with gr.Row(equal_height=True):
                        self.opacity = gr.Slider(0, 1, value=OVERLAY_ALPHA, step=0.05, label="Mask opacity",
                                                 elem_id="opacity", scale=1)
                        self.min_score = gr.Slider(0, 1, value=0, step=0.05, elem_id="min-score", scale=1,
                                                   label="Hide proposals scoring below")
                        self.toggles = gr.CheckboxGroup(label="Show label spaces", choices=[], elem_id="space-toggles",
                                                        scale=1)
                with gr.Column(scale=2):
                    self.selected_md = gr.Markdown(NOTHING_SELECTED, elem_id="selected-segment")
                    # Not shown: selecting a segment by its id, for API clients (the select_segment endpoint).
                    self.select_id = gr.Textbox(visible=False, elem_id="select-segment-id")
                    with gr.Row(equal_height=True):
                        self.class_dd = gr.Dropdown(label="Class", choices=[], elem_id="class-picker", scale=3,
                                                    allow_custom_value=True)
                        self.relabel_btn = gr.Button("Relabel", elem_id="relabel-btn", scale=1)
                    with gr.Row():
                        self.delete_btn = gr.Button("Delete", elem_id="delete-btn", variant="stop", size="md")
                        self.delete_like_btn = gr.Button("Delete all shown of its class", elem_id="delete-like-btn",
                                                         interactive=False, size="md")
                    with gr.Row(equal_height=True):
                        self.merge_dd = gr.Dropdown(label="Merge with", choices=[], elem_id="merge-picker", scale=3,
                                                    allow_custom_value=True)
                        self.merge_btn = gr.Button("Merge", elem_id="merge-btn", scale=1)
                    # The brush picture is drawn only while this is open: redrawing it (a WebGL canvas) for every
                    # selection made the browser take seconds to show anything else.
                    with gr.Accordion("Brush: paint on the selected segment", open=False,
                                      elem_id="brush-panel") as self.brush_panel:
                        self.editor = gr.ImageEditor(label="Paint, then add it to the selected mask, erase it from "
                                                           "the mask, or make a new segment of the class above",
                                                     elem_id="editor", sources=(), transforms=(), layers=False,
                                                     brush=brush(), type="numpy", height=300)
                        with gr.Row():
                            self.add_btn = gr.Button("Add to mask", elem_id="add-brush-btn", size="md")
                            self.erase_btn = gr.Button("Erase from mask", elem_id="erase-brush-btn", size="md")
                            self.new_btn = gr.Button("New segment", elem_id="new-segment-btn", size="md")
                    self.segments_df = gr.Dataframe(headers=SEGMENT_COLUMNS, interactive=False, max_height=300,
                                                    elem_id="segments-table", label="Shown segments (click a row)")
                    with gr.Row(visible=False) as self.conflict_row:  # only while an edit clashed
                        self.keep_btn = gr.Button("Save mine anyway", elem_id="keep-mine-btn")
                        self.reload_btn = gr.Button("Reload theirs", elem_id="reload-btn")
        # What the events fill, by the keys of `app.labeling.view`.
        self.slots = {
            "state": self.state, "image": self.image_dd, "title": self.title_md, "overview": self.overview,
            "toggles": self.toggles, "table": self.segments_df, "selected": self.selected_md, "class": self.class_dd,
            "merge": self.merge_dd, "delete_like": self.delete_like_btn, "undo": self.undo_btn,
            "redo": self.redo_btn, "conflict": self.conflict_row, "accept_empty": self.accept_empty_row,
            "message": self.message_md, "min_score": self.min_score,
        }
        self.outputs = list(self.slots.values())

