"""The handlers with a REAL (tiny, untrained) RESI checkpoint instead of the fake model: the checkpoint loads,
a coco128 photo is proposed and the proposal is saved. An untrained model may find nothing, so these tests
check that the proposal is stored and well formed, not its quality. Broken checkpoints give one message."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from app.class_sets.handlers import save_class_set, suggest_synonyms
from app.config import AppConfig
from app.context import UserState, class_options, find_option, load_context, trained_spaces
from app.events import guarded
from app.labeling.accept import accept
from app.labeling.edits import add_segment, redo, undo
from app.labeling.images import load_image
from app.labeling.propose import propose
from app.projects.handlers import create_project, project_overview
from app.projects.upload import upload_images
from app.services import Services, UserError, open_services
from storage import repo
from tests.app.conftest import coco_photo


def real_services(data_dir: Path, checkpoint: Path, out_of_domain_threshold: float | None = None,
                  model_process: bool = True) -> Services:
    return open_services(AppConfig(data_dir=data_dir, checkpoint=checkpoint, device="cpu",
                                   out_of_domain_threshold=out_of_domain_threshold, model_process=model_process))


def project_with_photo(svc: Services, spaces: list[str], adhoc: str) -> tuple[UserState, Path]:
    photo = coco_photo()
    state = create_project(svc, "coco")
    report = upload_images(svc, state, [photo])  # read in place
    assert report.added == [photo.name]
    save_class_set(svc, state, spaces, adhoc, [])
    return replace(state, image_id=report.first_image_id), photo


def test_propose_with_a_real_tiny_checkpoint_saves_the_proposal(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # In the app's process: the test changes the model's thresholds and weights below.
    svc = real_services(tmp_path / "data", tiny_checkpoint, model_process=False)
    assert [s.name for s in trained_spaces(svc)] == ["street", "portrait", "drive", "parts", "avenue"]
    state, photo = project_with_photo(svc, ["street", "portrait"], "cat")
    result = propose(svc, state, "ann")
    assert result.ok and result.message.startswith("Proposed ")
    view = result.view
    width, height = Image.open(photo).size
    assert view.status == "proposed" and view.image.shape == (height, width, 3)
    check_segments(view.segments, (height, width))
    with svc.sessions() as session:
        proposal = repo.latest_proposal(session, state.image_id)
        assert proposal is not None and proposal.inference_ms > 0
        assert len(repo.proposal_segments(proposal)) == len(view.segments)
        (version,) = repo.list_model_versions(session, state.project_id)
        assert version.name.startswith("tiny-") and proposal.model_version_id == version.id
    # An untrained model finds nothing; with "no object" switched off and no thresholds it finds segments,
    # so real masks go through the same conversion and storage. Re-proposing is one undoable edit.
    predictor = svc.model.predictor()
    predictor.score_threshold = predictor.overlap_threshold = 0.0
    with torch.no_grad():
        predictor.model.no_object_embedding.zero_()
    predictor.clear_cache()
    again = propose(svc, result.state, "ann")
    assert again.ok and again.view.segments and again.view.status == "in_review"
    check_segments(again.view.segments, (height, width))
    undone = undo(svc, again.state, "ann")
    assert len(undone.view.segments) == len(view.segments)
    assert accept(svc, redo(svc, undone.state, "ann").state, "ann").ok


def check_segments(segments: list, shape: tuple[int, int]) -> None:
    for seg in segments:
        assert seg.mask.shape == shape and seg.mask.dtype == bool and seg.mask.any()
        assert set(seg.label_space.split("+")) <= {"street", "portrait", "adhoc"}
        assert seg.score is not None and 0.0 <= seg.score <= 1.0


def test_checkpoint_of_another_text_encoder_gives_one_clear_message(tiny_checkpoint: Path, tmp_path: Path) -> None:
    other = shutil.copytree(tiny_checkpoint, tmp_path / "clip-ckpt")
    meta = json.loads((other / "meta.json").read_text())
    meta["text_encoder"] = meta["config"]["text_encoder"] = "open_clip:ViT-B-32:openai"
    (other / "meta.json").write_text(json.dumps(meta))
    svc = real_services(tmp_path / "data", other)
    state, _ = project_with_photo(svc, ["street"], "")
    for _ in range(2):  # the same message every time; nothing is left half loaded
        with pytest.raises(UserError, match=r"trained with text encoder 'open_clip:ViT-B-32:openai'.*"
                                            r"--text-encoder open_clip:ViT-B-32:openai"):
            propose(svc, state, "ann")
    assert project_overview(svc, state).counts["new"] == 1  # the app is still usable


def test_corrupt_checkpoint_gives_one_clear_message_and_the_app_stays_up(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    svc = real_services(tmp_path / "data", broken)
    state, _ = project_with_photo(svc, ["street"], "")
    with pytest.raises(UserError, match="corrupt or truncated"):
        propose(svc, state, "ann")
    with pytest.warns(UserWarning) as caught:  # what the UI shows: one warning, no traceback, nothing changed
        assert guarded(propose)(svc, state, "ann") == gr.skip()
    [shown] = [str(w.message) for w in caught]
    assert "corrupt or truncated" in shown and "Traceback" not in shown
    # Everything that does not need the model still works.
    state, view = load_image(svc, state)
    options = class_options(svc, load_context(svc, state))
    layer = np.zeros((*view.image.shape[:2], 4), dtype=np.uint8)
    layer[10:50, 10:50] = 255
    added = add_segment(svc, state, "ann", {"background": None, "layers": [layer], "composite": None},
                          find_option(options, "person [street]"))
    assert added.ok and accept(svc, added.state, "ann").ok


def test_propose_with_the_demo_checkpoint_says_when_a_space_was_held_back(tmp_path: Path) -> None:
    from resi_core.world import make_sample

    demo = Path(__file__).resolve().parents[2] / "checkpoints" / "demo"
    svc = real_services(tmp_path / "data", demo, out_of_domain_threshold=0.98)  # `launch.py --domain-aware`
    sample = make_sample("M1", "val", 1, seed=7)  # odd M1 images are portrait-domain close-ups
    assert sample.domain == "portrait"
    path = tmp_path / "portrait.png"
    Image.fromarray(sample.image).save(path)
    state = create_project(svc, "world")
    report = upload_images(svc, state, [path])
    save_class_set(svc, state, ["street", "portrait"], "", [])
    result = propose(svc, replace(state, image_id=report.first_image_id), "ann")
    assert result.ok
    assert "looks most like 'portrait'" in result.message and "proposals of 'street' needed" in result.message
    assert {s.class_name for s in result.view.segments} & {"face", "hair"}


def test_synonym_suggestions_name_the_spaces_and_leave_out_parts_of_wholes(tiny_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    """With MiniLM: the world's synonyms (docs/WORLD.md: person ≡ pedestrian, vehicle = car ∪ truck) are
    suggested, a part and its whole (portrait's face and hair are parts of street's person) are not."""
    svc = real_services(tmp_path / "data", tiny_checkpoint)
    state = create_project(svc, "synonyms")
    pairs = {(s.a, s.space_a, s.b, s.space_b) for s in suggest_synonyms(svc, ["street", "portrait", "drive"], "",
                                                                          state=state)}
    assert ("person", "street", "pedestrian", "drive") in pairs and ("car", "street", "vehicle", "drive") in pairs
    assert not {p for p in pairs if {p[0], p[2]} & {"face", "hair"}}
    labels = [s.label for s in suggest_synonyms(svc, ["street", "drive"], "", state=state)]
    assert "person [street] ≈ pedestrian [drive] (" in " ".join(labels)
