"""The whole app: one tab per feature (each module builds its tab and wires its own events), and the
events that cross tabs: a project opened fills the Class set and Label tabs, and so on."""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.class_sets.tab import ClassSetTab
from app.config import AppConfig
from app.context import UserState
from app.finetune.tab import FinetuneTab
from app.labeling.tab import LabelTab
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
        state = gr.State(UserState())
        gr.Markdown("# RESI: model-assisted segmentation labeling\n" + HELP)
        with gr.Tabs():
            projects = ProjectsTab(svc, state)
            classes = ClassSetTab(svc, state)
            label = LabelTab(svc, state)
            quality = QualityTab(svc, state)
            finetune = FinetuneTab(svc, state)
        for tab in (projects, classes, label, quality, finetune):
            tab.wire(demo)

        for opened in projects.opened:
            opened.success(classes.show_project, [state], classes.project_outputs)
            opened.success(label.show_project, [state], label.project_outputs)
        projects.uploaded.success(label.refresh_images, [state], [label.image_dd])
        classes.saved.success(label.refresh_classes, [state], [label.class_dd])
        for changed in label.changed:  # the image's status may be different: the Projects tab follows
            changed.success(projects.on_overview, [state], projects.overview_outputs)
        finetune.model_changed.change(classes.refresh_spaces, [state, classes.spaces_cb], [classes.spaces_cb])
    return demo
