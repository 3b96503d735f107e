"""The Class set tab: tick trained label spaces, type ad-hoc classes, confirm suggested synonyms, save."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.class_sets.handlers import current_class_set, save_class_set, suggest_synonyms
from app.context import UserState, load_context, trained_spaces
from app.events import guarded
from app.services import Services, UserError


class ClassSetTab:
    """Its components, and `saved`: the event others follow when the class set changed."""

    def __init__(self, svc: Services, state: gr.State):
        self.svc, self.state = svc, state
        with gr.Tab("Class set", id="classes"):
            self.class_set_id = gr.State(None)  # the class set the tab was loaded with (save checks it)
            self.spaces_cb = gr.CheckboxGroup(label="Label spaces the model was trained on", choices=[],
                                              elem_id="label-spaces")
            self.adhoc_tb = gr.Textbox(label="Ad-hoc classes, comma-separated", elem_id="adhoc-classes",
                                       placeholder="e.g. cat, dog, traffic cone")
            self.suggest_btn = gr.Button("Suggest synonyms", elem_id="suggest-btn")
            self.synonyms_cb = gr.CheckboxGroup(label="Suggested synonyms: tick the pairs that are one class",
                                                choices=[], elem_id="synonyms")
            self.save_btn = gr.Button("Save class set", elem_id="save-class-set-btn", variant="primary")
            self.summary_md = gr.Markdown(elem_id="class-set-summary")
        # What `show_project` fills when a project is opened.
        self.project_outputs = [self.spaces_cb, self.adhoc_tb, self.summary_md, self.class_set_id]

    def wire(self, demo: gr.Blocks) -> None:
        demo.load(self.on_load, outputs=[self.spaces_cb])
        self.suggest_btn.click(self.on_suggest, [self.state, self.spaces_cb, self.adhoc_tb], [self.synonyms_cb],
                               api_name="suggest_synonyms")
        self.saved = self.save_btn.click(
            self.on_save, [self.state, self.spaces_cb, self.adhoc_tb, self.synonyms_cb, self.class_set_id],
            [self.summary_md, self.class_set_id], api_name="save_class_set")

    def spaces_update(self, st: UserState, ticked: list[str] | None) -> Any:
        """The label spaces of the project's model as choices; ticks of other spaces are dropped."""
        try:
            ctx = load_context(self.svc, st) if st.project_id is not None else None
            names = [s.name for s in trained_spaces(self.svc, ctx)]
        except UserError as exc:
            gr.Warning(str(exc))
            return gr.skip()
        return gr.CheckboxGroup(choices=names, value=[n for n in ticked or [] if n in names])

    @guarded
    def show_project(self, st: UserState) -> tuple[Any, ...]:
        """Values of `project_outputs`: spaces, typed classes, summary, and the id of the set the tab starts from."""
        choice = current_class_set(self.svc, st)
        if choice is None:
            return (self.spaces_update(st, []), "",
                    "No class set yet: tick label spaces and/or type class names, then save.", None)
        return (self.spaces_update(st, list(choice.label_spaces)), ", ".join(choice.adhoc),
                f"Class set: {choice.summary}.", choice.id)

    @guarded
    def refresh_spaces(self, st: UserState, ticked: list[str] | None) -> Any:
        return self.spaces_update(st, ticked)

    @guarded
    def on_load(self) -> Any:
        spaces = [s.name for s in trained_spaces(self.svc)] if self.svc.model.available else []
        return gr.CheckboxGroup(choices=spaces)

    @guarded
    def on_suggest(self, st: UserState, spaces: list[str], adhoc: str) -> Any:
        suggestions = suggest_synonyms(self.svc, spaces or [], adhoc, state=st)
        if not suggestions:
            gr.Info("No synonyms suggested: no two classes of different spaces are alike enough.")
        return gr.CheckboxGroup(choices=[s.label for s in suggestions], value=[])

    @guarded
    def on_save(self, st: UserState, spaces: list[str], adhoc: str, ticked: list[str],
                based_on: int | None) -> tuple[str, int | None]:
        confirmed = [s for s in suggest_synonyms(self.svc, spaces or [], adhoc, state=st)
                     if s.label in (ticked or [])] if ticked else []
        choice = save_class_set(self.svc, st, spaces, adhoc, confirmed, based_on=based_on)
        gr.Info("Class set saved.")
        return f"Class set: {choice.summary}.", choice.id
