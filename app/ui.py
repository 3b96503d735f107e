"""The whole app: one tab per feature (each module builds its tab and wires its own events), and the
events that cross tabs: a project opened fills the Class set and Label tabs, and so on."""

from __future__ import annotations

from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from app.class_sets.tab import ClassSetTab
from app.config import AppConfig
from app.context import UserState
from app.finetune.tab import FinetuneTab
from app.labeling.tab import LabelTab
from app.login import LoginThrottle
from app.projects.tab import ProjectsTab
from app.quality.tab import QualityTab
from app.services import Services

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

# A crosshair over the picture says that a click selects. The brush picture's own eraser (it rubs out
# strokes not yet applied) is hidden: "Erase from mask" is the one erase (`eraser=False` would hide the
# whole toolbar, brush included, in gradio 6.31).
CSS = """
#overview img { cursor: crosshair; }
#editor button[aria-label='Erase'] { display: none; }
"""

HELP = (
    "Steps: **Projects** (create/open, upload) → **Class set** → **Label** (propose, correct, accept) → "
    "**Quality**; **Fine-tune** learns a new label space from accepted segments. Shortcuts on the Label tab: "
    "Shift+Enter accept & next, Ctrl+Z undo, Ctrl+Y redo, Delete removes the selected segment."
)


def launch_kwargs(config: AppConfig) -> dict[str, Any]:
    """Arguments of `Blocks.launch` that follow from the config (launch.py adds the rest). With logins,
    failed ones are throttled per user and per address (app/login.py)."""
    middleware = [Middleware(LoginThrottle)] if config.auth else []
    return {
        "app_kwargs": {"middleware": middleware},
        "server_name": config.host,
        "server_port": config.port,
        "auth": list(config.auth) or None,
        "max_file_size": config.max_upload_bytes,
        "ssr_mode": False,
        "show_error": False,
        "head": SHORTCUTS_JS,
        "css": CSS,
        "allowed_paths": [str(config.export_dir.resolve())],
    }


# Gradio's temporary files (uploads never sent with Upload, drawn brush layers, and the images of every
# Label tab update: a photo and a PNG per segment, each save) older than 15 minutes are deleted every 5;
# the Upload button deletes its own at once.
DELETE_CACHE = (300, 900)
# Requests of one event (e.g. 20 users' saves) that run at once; more wait in Gradio's queue.
EVENT_CONCURRENCY = 8


def build_ui(svc: Services) -> gr.Blocks:
    with gr.Blocks(title="RESI labeling", delete_cache=DELETE_CACHE) as demo:
        state = gr.State(UserState())
        gr.Markdown("# RESI: model-assisted segmentation labeling\n" + HELP)
        with gr.Tabs() as tabs:
            projects = ProjectsTab(svc, state)
            classes = ClassSetTab(svc, state)
            label = LabelTab(svc, state)
            quality = QualityTab(svc, state)
            finetune = FinetuneTab(svc, state)
        for tab in (projects, classes, label, quality, finetune):
            tab.wire(demo)

        for opened in projects.opened:
            opened.success(classes.show_project, [state], classes.project_outputs)
            label.then_editor(opened.success(label.show_project, [state], label.outputs))
        for added in (projects.uploaded, projects.imported):
            added.success(label.refresh_images, [state], [label.image_dd])
        classes.saved.success(label.refresh_classes, [state], [label.class_dd])
        label.then_editor(projects.images_df.select(label.open_row, [state], [*label.outputs, tabs]))
        finetune.model_changed.change(classes.refresh_spaces, [state, classes.spaces_cb], [classes.spaces_cb])
    # Gradio runs each event one request at a time unless told otherwise: with 20 annotators, every save
    # waited for everyone else's. Saves and views now run side by side (SQLite takes the writes in turn);
    # proposals keep their own queue of one (labeling/tab.py, MODEL_QUEUE).
    demo.queue(default_concurrency_limit=EVENT_CONCURRENCY)
    return demo
