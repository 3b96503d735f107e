"""`python -m train finetune`: only the new LSQE trains (from COCO files or accepted annotations),
the result loads back and registers under its base, and every user error is one line with exit code 2.
With --job-id the run reports to its jobs row: running with its pid, progress, then done or failed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from resi_core.data import CocoDataset, augment, collate
from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import (
    RESIConfig,
    RESICriterion,
    build_model,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from storage import repo
from storage.errors import Correction, InvalidInput
from storage.files import FileStore, path_sha256
from storage.models import EventType, JobStatus
from tests.resi_core.test_model_data import TINY_SPACES, write_tiny_coco
from tests.storage.helpers import png_bytes, segment
from tests.train.conftest import ROOT, project_database
from train.finetune import AcceptedDataset, main
from train.jobs import JobReporter

NEW = "closeup"
H, W = 48, 64


@pytest.fixture(autouse=True)
def _offline(offline):
    """No network (tests/train/conftest.py); `encoder` and `base` (a tiny untrained checkpoint) come from there."""


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    """Close-ups with the classes face and hair (two annotated images, one empty one)."""
    return write_tiny_coco(tmp_path_factory.mktemp("coco") / NEW, "portrait", n_images=3)


def coco_args(base: Path, coco: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(base), "--space", NEW, "--instances", str(coco / "instances.json"),
            "--images", str(coco / "images"), "--out", str(out), "--batch-size", "2", "--threads", "1",
            "--device", "cpu", "--no-progress", *extra]


def fixed_batch_loss(model, coco: Path) -> float:
    """The set loss of the two annotated images, with the same sampled points every call."""
    dataset = CocoDataset(NEW, coco / "images", coco / "instances.json")
    rng = np.random.default_rng(0)
    batch = collate([augment(dataset[i], 64, rng, scale_range=(1.0, 1.0), flip=False) for i in (0, 1)], 64)
    model.eval()
    torch.manual_seed(123)
    with torch.no_grad():
        output = model(batch.pixel_values, batch.spaces)
        return RESICriterion(model)(model, output, batch.targets).total.item()


def test_coco_finetune_trains_only_the_new_lsqe(base, coco, encoder, tmp_path, capsys):
    out = tmp_path / "tuned"
    assert main(coco_args(base, coco, out, "--iterations", "60", "--no-augment")) == 0
    printed = capsys.readouterr().out
    assert f"LSQE of {NEW!r} initialized as a mix of: portrait" in printed  # the most similar space first
    assert "final" in printed
    assert "domain: the base checkpoint has no domain head; never held back" in printed

    meta = read_meta(out)
    info = meta["training"]["finetune"]
    assert [s["name"] for s in meta["label_spaces"]] == ["street", "portrait", NEW]
    assert info["space"] == NEW and info["classes"] == ["face", "hair"] and info["n_images"] == 3
    assert info["source"]["kind"] == "coco" and info["iterations"] == 60
    assert info["base_checkpoint"] == str(base.resolve())
    assert info["init_weights"]["portrait"] > 0.9 > info["init_weights"]["street"]  # same class names win
    assert info["domain"]["domain"] is None and meta["space_domains"] == {}

    tuned = load_checkpoint(out, text_encoder_id="minilm")
    assert tuned.label_spaces[NEW].class_names == ["face", "hair"]
    assert torch.allclose(tuned.class_embeddings(NEW), encoder.encode(["face", "hair"]), atol=1e-6)

    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(after) - set(before) == {"query_sets.2", "class_embeddings_2"}
    assert [key for key in before if not torch.equal(before[key], after[key])] == []  # all else bit-identical

    initial = load_checkpoint(base)
    initial.add_label_space(tuned.label_spaces[NEW], encoder)
    assert not torch.equal(initial.query_set(NEW).detach(), tuned.query_set(NEW).detach())
    assert fixed_batch_loss(tuned, coco) < 0.98 * fixed_batch_loss(initial, coco)


def test_continue_refits_an_existing_space_only(base, coco, tmp_path):
    out = tmp_path / "refit"
    assert main(coco_args(base, coco, out, "--iterations", "2", "--continue", "--space", "portrait")) == 0
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(after) == set(before)
    assert [key for key in before if not torch.equal(before[key], after[key])] == ["query_sets.1"]
    assert read_meta(out)["training"]["finetune"]["continued"] is True


# ----- the new space's domain (domain-aware OMI) --------------------------------------------------

DOMAINS = ["street", "portrait", "drive"]


@pytest.fixture(scope="module")
def three(tmp_path_factory, encoder) -> Path:
    """An untrained tiny RESI checkpoint with the label spaces street, portrait and drive, no domain head."""
    config = RESIConfig.from_json(json.loads((ROOT / "configs" / "world_tiny.json").read_text())["model"])
    spaces = [LabelSpace(name, tuple(ClassDef(c, t) for c, t in classes)) for name, classes in TINY_SPACES.items()]
    spaces.append(LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"))))
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("three") / "three", build_model(config, spaces, encoder))


def with_head(checkpoint: Path, bias: list[float], out: Path) -> Path:
    """`checkpoint` with a hand-set domain head over DOMAINS: zero weights, so every image gets the
    probabilities softmax(bias), whatever it shows."""
    model = load_checkpoint(checkpoint)
    model.set_domain_head(DOMAINS, torch.zeros(len(DOMAINS), model.pooled_dim()), torch.tensor(bias))
    return save_checkpoint(out, model)


@pytest.mark.parametrize("bias,domain,says", [
    ([8.0, 0.0, 0.0], "street", "domain: looks like street's images (1.00); held back on other domains' images"),
    # softmax([0.3, 0, 0]) = (0.40, 0.30, 0.30): the best domain's mean is under 0.5
    ([0.3, 0.0, 0.0], None, "domain: no trained domain fits (best street 0.40); never held back"),
])
def test_finetune_records_the_domain_the_new_spaces_images_look_like(three, coco, tmp_path, capsys, bias, domain,
                                                                     says):
    base = with_head(three, bias, tmp_path / "base")
    out = tmp_path / "tuned"
    assert main(coco_args(base, coco, out, "--iterations", "1")) == 0
    assert says in capsys.readouterr().out
    meta = read_meta(out)
    assert meta["space_domains"] == ({NEW: domain} if domain else {})
    figures = meta["training"]["finetune"]["domain"]
    # the 2 images it trained on: of 3, one is held out
    assert figures["domain"] == domain and figures["best"] == "street" and figures["images"] == 2
    assert figures["probability"] == pytest.approx(float(torch.tensor(bias).softmax(0)[0]), abs=1e-4)
    assert set(figures["mean_probs"]) == set(DOMAINS) and figures["min_probability"] == 0.5
    assert load_checkpoint(out).space_domains == meta["space_domains"]


def test_continue_recomputes_the_domain_of_a_finetuned_space(three, coco, tmp_path, capsys):
    first = tmp_path / "first"
    assert main(coco_args(with_head(three, [8.0, 0.0, 0.0], tmp_path / "base"), coco, first, "--iterations", "1")) == 0
    assert load_checkpoint(first).space_domains == {NEW: "street"}
    # The same checkpoint whose head now finds every image portrait-like: a refit places the space anew.
    reheaded = with_head(first, [0.0, 8.0, 0.0], tmp_path / "reheaded")
    assert load_checkpoint(reheaded).space_domains == {NEW: "street"}  # kept until recomputed
    capsys.readouterr()
    assert main(coco_args(reheaded, coco, tmp_path / "again", "--iterations", "1", "--continue")) == 0
    assert "domain: looks like portrait's images (1.00)" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "again").space_domains == {NEW: "portrait"}
    # A space the head knows keeps its own domain.
    assert main(coco_args(reheaded, coco, tmp_path / "own", "--iterations", "1", "--continue", "--space",
                          "portrait")) == 0
    assert "domain: 'portrait' has a domain of its own in the domain head; unchanged" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "own").space_domains == {NEW: "street"}


# ----- from a project's accepted annotations ------------------------------------------------------


def _label(session, store, project_id: int, seed: int, segments: list[dict], accept: bool = True) -> int:
    image, _ = repo.add_image(session, store, project_id, png_bytes(W, H, seed), f"{seed}.png")
    version = repo.apply_correction(session, image.id, image.version, "ann", Correction(EventType.ADD, after=segments))
    if accept:
        repo.accept(session, image.id, version, "ann")
    return image.id


@pytest.fixture
def project_db(tmp_path):
    """A data dir whose project Streets has accepted ad-hoc hydrants and signs (two overlapping)."""
    data_dir = tmp_path / "data"
    engine, sessions, store = project_database(data_dir)
    with sessions.begin() as s:
        project_id = repo.create_project(s, "Streets").id
        ids = [
            _label(s, store, project_id, 0, [
                segment("a", H, W, (0, 0, 20, 20), "hydrant", "adhoc"),
                segment("b", H, W, (10, 10, 30, 30), "sign", "adhoc"),  # overlaps a: loses 10 x 10 pixels
                segment("c", H, W, (30, 30, 48, 64), "person", "street"),
            ]),
            _label(s, store, project_id, 1, [segment("d", H, W, (5, 30, 25, 60), "sign", "adhoc")]),
            _label(s, store, project_id, 2, [segment("e", H, W, (0, 0, 9, 9), "car", "street")]),  # no ad-hoc
            _label(s, store, project_id, 3, [segment("f", H, W, (0, 0, 9, 9), "hydrant", "adhoc")], accept=False),
        ]
        empty = repo.create_project(s, "Empty").id
        _label(s, store, empty, 4, [segment("g", H, W, (0, 0, 9, 9), "hydrant", "adhoc")], accept=False)
    yield data_dir, sessions, project_id, ids
    engine.dispose()


def project_args(base: Path, data_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(base), "--space", "hydrants", "--project", "Streets", "--data-dir", str(data_dir),
            "--out", str(out), "--iterations", "2", "--batch-size", "2", "--threads", "1", "--device", "cpu",
            "--no-progress", *extra]


def test_accepted_dataset_keeps_one_space_without_overlaps(project_db):
    data_dir, sessions, project_id, ids = project_db
    with sessions() as s:
        accepted = repo.accepted_annotations(s, project_id)
    dataset = AcceptedDataset("hydrants", accepted, "adhoc", FileStore(data_dir / "images"))
    assert dataset.label_space.class_names == ["hydrant", "sign"]
    assert [im.image_id for im in dataset.images] == ids[:2] and dataset.overlapping_images == 1
    sample = dataset[0]
    assert sample.image.shape == (H, W, 3) and sample.masks.shape == (2, H, W) and sample.space == "hydrants"
    assert sample.labels.tolist() == [0, 1]
    assert (sample.masks.sum(0) <= 1).all()
    assert sample.masks.sum(axis=(1, 2)).tolist() == [400, 400 - 100]  # the later sign lost the overlap


def test_project_finetune_registers_under_its_base_with_holdout_figures(base, project_db, tmp_path, capsys):
    data_dir, sessions, project_id, ids = project_db
    out = tmp_path / "hydrants"
    assert main(project_args(base, data_dir, out)) == 0
    captured = capsys.readouterr()
    assert "warning: in 1 of 2 images" in captured.err and "2 images: 1 to train on, 1 held out" in captured.out
    info = read_meta(out)["training"]["finetune"]
    assert info["classes"] == ["hydrant", "sign"] and info["n_images"] == 2 and info["n_train"] == 1
    assert info["scope"] == "lsqe"
    assert info["source"] == {"kind": "project", "project": "Streets", "project_id": project_id,
                              "from_space": "adhoc", "image_ids": ids[:2], "accepted_image_ids": ids[:3]}
    holdout = info["holdout"]
    assert len(holdout["image_ids"]) == 1 and holdout["image_ids"][0] in ids[:2]
    for when in ("before", "after"):  # measured on the held-out image, in points
        figures = holdout[when]
        assert figures["images"] == 1 and set(figures) >= {"piq", "pq", "miou", "ap", "overlap_recall"}
        assert figures["piq"] is None or 0 <= figures["piq"] <= 100
    with sessions() as s:
        base_version, tuned = repo.list_model_versions(s, project_id)
    assert base_version.checkpoint_sha256 == path_sha256(base) and base_version.parent_id is None
    assert tuned.parent_id == base_version.id and not base_version.is_active
    assert tuned.checkpoint_sha256 == path_sha256(out) and tuned.checkpoint_path == str(out.resolve())
    assert tuned.training["finetune"]["holdout"] == holdout  # the figures live with the model version
    assert tuned.is_active is info["activation"]["active"]
    assert [s["name"] for s in tuned.label_spaces] == ["street", "portrait", "hydrants"]

    # A second run finds the registered base by its hash.
    assert main(project_args(base, data_dir, tmp_path / "again")) == 0
    with sessions() as s:
        versions = repo.list_model_versions(s, project_id)
    assert len(versions) == 3 and versions[2].parent_id == base_version.id


def test_continue_refits_a_trained_space_from_corrections_in_its_own_class_order(base, project_db, tmp_path,
                                                                                capsys):
    data_dir, sessions, project_id, ids = project_db
    out = tmp_path / "street"
    # the accepted street segments are a person and a car: sorted they would be car, person
    assert main(project_args(base, data_dir, out, "--space", "street", "--from-space", "street", "--continue")) == 0
    info = read_meta(out)["training"]["finetune"]
    assert info["classes"] == ["person", "car", "road"] and info["continued"] and info["n_images"] == 2
    with sessions.begin() as s:
        store = FileStore(data_dir / "images")
        _label(s, store, project_id, 8, [segment("t", H, W, (0, 0, 9, 9), "tram", "street")])
    assert main(project_args(base, data_dir, tmp_path / "tram", "--space", "street", "--from-space", "street",
                             "--continue")) == 2
    assert "the accepted segments have classes ['tram'] that label space 'street' lacks" in capsys.readouterr().err


def fake_holdout(monkeypatch, *piqs):
    """evaluate_holdout returns these PIQs in turn (before, after, ...), so the rule sees known figures."""
    calls = iter(piqs)

    def fake(model, images, spaces, synonyms=(), device="cpu", on_image=None):
        return {"images": len(images), "piq": next(calls), "pq": None, "miou": None, "ap": None,
                "overlap_recall": None, "per_space_piq": {}, "per_class_piq": {}}

    monkeypatch.setattr("train.finetune.evaluate_holdout", fake)


@pytest.mark.parametrize(("before", "after", "force", "active", "says"), [
    (30.0, 20.0, False, False, "NOT made active: held-out PIQ 30.0 -> 20.0 dropped; the active model stays version"),
    (30.0, 20.0, True, True, "now ACTIVE: held-out PIQ 30.0 -> 20.0 dropped; made active because of --force"),
    (20.0, 20.0, False, True, "now ACTIVE: held-out PIQ 20.0 -> 20.0 did not drop"),
    (None, None, False, False, "NOT made active: held-out PIQ was not measured"),
])
def test_new_version_is_active_only_if_holdout_piq_did_not_drop(base, project_db, tmp_path, capsys, monkeypatch,
                                                                before, after, force, active, says):
    data_dir, sessions, project_id, _ = project_db
    with sessions.begin() as s:  # the app registered and activated its checkpoint on the first proposal
        in_use = repo.register_model_version(s, project_id, "demo", str(base), path_sha256(base), [], {},
                                             active=True).id
    fake_holdout(monkeypatch, before, after)
    out = tmp_path / "hydrants"
    assert main(project_args(base, data_dir, out, *(["--force"] if force else []))) == 0
    printed = capsys.readouterr().out
    assert says in printed, printed
    with sessions() as s:
        tuned = repo.list_model_versions(s, project_id)[-1]
        assert tuned.is_active is active and tuned.checkpoint_path == str(out.resolve())
        assert repo.active_model_version(s, project_id).id == (tuned.id if active else in_use)
    assert tuned.training["finetune"]["activation"]["active"] is active
    if not active:
        assert f"the active model stays version {in_use}" in printed


def test_when_new_does_nothing_until_enough_images_were_accepted_since_the_last_version(
        base, project_db, tmp_path, capsys, monkeypatch):
    data_dir, sessions, project_id, ids = project_db
    models = data_dir / "models"
    assert main(["--project", "Streets", "--data-dir", str(data_dir), "--when-new", "4"]) == 0
    assert capsys.readouterr().out == ("Nothing to do: 3 image(s) accepted (no fine-tuned version yet) in project "
                                       "'Streets'; fine-tuning starts at 4.\n")
    with sessions() as s:
        assert repo.list_model_versions(s, project_id) == []
    assert not models.exists()  # a no-op writes nothing

    fake_holdout(monkeypatch, 10.0, 12.0, 12.0, 15.0)  # both runs improve: each becomes active
    assert main(project_args(base, data_dir, tmp_path / "first")) == 0
    with sessions() as s:
        first = repo.active_model_version(s, project_id)
    assert first.checkpoint_path == str((tmp_path / "first").resolve())
    with sessions.begin() as s:  # one more accepted image, and the image that was in review is accepted
        store = FileStore(data_dir / "images")
        _label(s, store, project_id, 7, [segment("h", H, W, (20, 20, 40, 40), "sign", "adhoc")])
        repo.accept(s, ids[3], repo.get_image(s, ids[3]).version, "ann")
    capsys.readouterr()
    assert main(["--project", "Streets", "--data-dir", str(data_dir), "--when-new", "3"]) == 0
    assert capsys.readouterr().out.startswith(f"Nothing to do: 2 image(s) accepted since model version {first.id} ")

    # Enough: no --space, --checkpoint or --out: the last version's space, refitted on the active model.
    argv = ["--project", "Streets", "--data-dir", str(data_dir), "--when-new", "2", "--iterations", "1",
            "--batch-size", "1", "--threads", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"2 image(s) accepted since model version {first.id}: fine-tuning." in printed
    (out,) = models.iterdir()
    assert out.name.startswith("hydrants-")
    info = read_meta(out)["training"]["finetune"]
    assert info["continued"] is True and info["base_checkpoint"] == first.checkpoint_path
    assert info["n_images"] == 4 and info["source"]["from_space"] == "adhoc"
    with sessions() as s:
        assert repo.active_model_version(s, project_id).checkpoint_path == str(out)


def test_project_errors_are_one_line(base, project_db, tmp_path, capsys):
    data_dir, *_ = project_db
    cases = [
        (["--project", "Nope"], "There is no project named 'Nope'"),
        (["--project", "Empty"], "has no accepted images"),
        (["--from-space", "drive"], "none of the 3 accepted images has segments of label space 'drive'"),
        (["--data-dir", str(tmp_path / "elsewhere")], "There is no database at"),
    ]
    for extra, message in cases:
        assert main(project_args(base, data_dir, tmp_path / "out", *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message.lower() in err.lower(), err
    assert not (tmp_path / "out").exists()


# ----- user errors with the COCO source -----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing_checkpoint", "meta.json is missing"),
        ("existing_space", "already has a label space 'portrait'"),
        ("continue_unknown", "has no label space 'nope' to refit"),
        ("continue_other_classes", "differ from those of label space 'street'"),
        ("shared_queries", "needs the text classifier and per-space queries"),
        ("out_is_a_checkpoint", "holds a checkpoint already"),
        ("no_categories", "its categories make no valid label space"),
        ("cuda", "CUDA is not available"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(base, coco, tmp_path, capsys, change, message):
    if change == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    extra = {
        "missing_checkpoint": ["--checkpoint", str(tmp_path / "nothing")],
        "existing_space": ["--space", "portrait"],
        "continue_unknown": ["--space", "nope", "--continue"],
        "continue_other_classes": ["--space", "street", "--continue"],
        "out_is_a_checkpoint": ["--out", str(base)],
        "cuda": ["--device", "cuda"],
    }.get(change, [])
    if change == "shared_queries":
        shared = tmp_path / "shared"
        shared.mkdir()
        meta = json.loads((base / "meta.json").read_text())
        meta["config"]["query_mode"] = "shared"
        (shared / "meta.json").write_text(json.dumps(meta))
        extra = ["--checkpoint", str(shared)]
    if change == "no_categories":
        data = json.loads((coco / "instances.json").read_text())
        (tmp_path / "empty.json").write_text(json.dumps({**data, "info": {}, "categories": [], "annotations": []}))
        extra = ["--instances", str(tmp_path / "empty.json")]
    assert main(coco_args(base, coco, out, "--iterations", "1", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (out / "meta.json").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--force"], "--force needs --project"),
    (["--when-new", "5"], "--when-new needs --project"),
    (["--from-space", "street"], "--from-space needs --project"),
    (["--holdout", "1"], "--holdout must be at least 0 and below 1"),
    (["--lr-shared", "0"], "--lr and --lr-shared positive"),
    (["--scope", "backbone"], "invalid choice: 'backbone'"),
])
def test_bad_flag_combinations_are_usage_errors(base, coco, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        main(coco_args(base, coco, tmp_path / "out", *extra))
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_coco_source_needs_checkpoint_space_and_out(base, coco, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--instances", str(coco / "instances.json"), "--images", str(coco / "images")])
    assert exit_info.value.code == 2 and "--instances needs --checkpoint, --space, --out" in capsys.readouterr().err


def test_project_without_a_model_or_a_space_to_continue_is_one_line(base, project_db, tmp_path, capsys):
    data_dir, *_ = project_db
    assert main(["--project", "Streets", "--data-dir", str(data_dir), "--space", "hydrants"]) == 2
    assert capsys.readouterr().err == ("error: Project 'Streets' has no active model yet: pass --checkpoint "
                                       "(e.g. checkpoints/demo).\n")
    assert main(["--project", "Streets", "--data-dir", str(data_dir), "--checkpoint", str(base)]) == 2
    assert "has no fine-tuned version to continue: name the label space to learn with --space" in (
        capsys.readouterr().err)
    assert not (data_dir / "models").exists()


# ----- scopes --------------------------------------------------------------------------------------


def _changed(before: dict, after: dict) -> set[str]:
    return {key for key in before if not torch.equal(before[key], after[key])}


@pytest.mark.parametrize("scope", ["decoder", "all"])
def test_scopes_train_what_they_say(base, coco, tmp_path, scope):
    out = tmp_path / scope
    assert main(coco_args(base, coco, out, "--scope", scope, "--iterations", "3", "--lr-shared", "0.01")) == 0
    before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    changed = _changed(before, after)
    backbone = {k for k in changed if k.startswith("mask2former.pixel_level_module.")}
    decoder = {k for k in changed if k.startswith("mask2former.transformer_module.")}
    classifier = {k for k in changed if k.split(".")[0] in ("class_proj", "no_object_embedding", "logit_scale")}
    assert decoder and classifier  # both scopes train the shared decoder and classifier
    assert bool(backbone) is (scope == "all")  # only `all` touches the backbone and pixel decoder
    assert not {k for k in changed if k.startswith("query_sets.")}  # the trained spaces' query sets never
    assert changed == backbone | decoder | classifier
    assert set(after) - set(before) == {"query_sets.2", "class_embeddings_2"}  # the new space's
    assert read_meta(out)["training"]["finetune"]["scope"] == scope


def test_feature_cache_holds_each_image_and_its_mirror(base, coco):
    from train.tuning import FeatureCache

    model = load_checkpoint(base).eval()
    dataset = CocoDataset(NEW, coco / "images", coco / "instances.json")
    cache = FeatureCache(model, dataset, 64, torch.device("cpu"))
    assert len(cache) == 2 * len(dataset)
    fitted = collate([augment(dataset[0], 64, np.random.default_rng(0), scale_range=(1.0, 1.0), flip=False)], 64)
    with torch.no_grad():
        direct = model.encode(fitted.pixel_values)
    # the cached features are the encoder's output for the fitted image (same op, same input: float-equal)
    assert torch.allclose(cache.views[0].mask_features, direct.mask_features[0], atol=1e-5)
    plain, mirror = cache.views[0].target.masks, cache.views[1].target.masks  # [N, 64, 64]; the image fills W
    assert plain.sum() > 0 and torch.equal(mirror, plain.flip(-1))
    features, targets = cache.batch(np.random.default_rng(0), 3)
    assert features.mask_features.shape[0] == 3 and len(targets) == 3


# ----- --job-id: status and progress in the jobs table -------------------------------------------


def _new_job(sessions, project_id: int) -> int:
    with sessions.begin() as s:
        return repo.create_job(s, project_id, "finetune", {"space": "hydrants"}).id


def _job(sessions, job_id: int):
    with sessions() as s:
        return repo.get_job(s, job_id)


def test_job_id_marks_running_reports_progress_and_ends_done(base, project_db, tmp_path, monkeypatch):
    data_dir, sessions, project_id, _ = project_db
    job_id = _new_job(sessions, project_id)
    seen = []
    report = JobReporter.progress

    def spy(self, fraction, message, force=False):  # what the app would read while the job trains
        job = _job(sessions, job_id)
        seen.append((round(fraction, 3), message.split(",")[0], job.status, job.pid))
        report(self, fraction, message, force)

    monkeypatch.setattr(JobReporter, "progress", spy)
    out = tmp_path / "hydrants"
    fake_holdout(monkeypatch, 10.0, 20.0)
    args = project_args(base, data_dir, out, "--job-id", str(job_id), "--iterations", "3")
    assert main(args) == 0
    running = (JobStatus.RUNNING, os.getpid())
    assert seen == [(0.0, "measuring the held-out images (before)", *running),
                    (0.0, "computing the backbone and pixel-decoder features of the training images", *running),
                    (0.333, "iteration 1/3", *running),
                    (0.667, "iteration 2/3", *running),
                    (1.0, "iteration 3/3", *running),
                    (1.0, "measuring the held-out images (after)", *running)]
    job = _job(sessions, job_id)
    with sessions() as s:
        active = repo.active_model_version(s, project_id)
    assert job.status is JobStatus.DONE and job.progress == 1.0 and job.finished_at is not None
    assert job.result["checkpoint"] == str(out.resolve()) and job.result["model_version_id"] == active.id
    assert job.result["space"] == "hydrants" and job.result["classes"] == ["hydrant", "sign"]
    assert job.message.startswith(f"Label space 'hydrants' (2 classes, scope lsqe) learned: model version {active.id} "
                                  "(parent ")
    assert "is now ACTIVE: held-out PIQ 10.0 -> 20.0 did not drop." in job.message
    assert job.result["before"]["piq"] == 10.0 and job.result["after"]["piq"] == 20.0 and job.result["active"]
    assert job.message.endswith("Domain: the base checkpoint has no domain head; never held back.")
    assert job.result["domain"] is None


def test_job_message_says_the_domain_of_the_accepted_images(three, project_db, tmp_path):
    data_dir, sessions, project_id, _ = project_db
    job_id = _new_job(sessions, project_id)
    base = with_head(three, [0.0, 0.0, 8.0], tmp_path / "base")
    assert main(project_args(base, data_dir, tmp_path / "hydrants", "--job-id", str(job_id))) == 0
    job = _job(sessions, job_id)
    assert job.status is JobStatus.DONE and job.result["domain"] == "drive"
    assert job.message.endswith("Domain: looks like drive's images (1.00); held back on other domains' images.")
    assert read_meta(tmp_path / "hydrants")["training"]["finetune"]["domain"]["images"] == 1  # 1 of 2 held out


def test_progress_is_written_at_most_about_once_a_second(project_db):
    _, sessions, project_id, _ = project_db
    job_id = _new_job(sessions, project_id)
    now = [100.0]
    reporter = JobReporter(sessions, job_id, project_id, clock=lambda: now[0])
    reporter.start("loading")
    reporter.progress(0.1, "too soon")
    assert (_job(sessions, job_id).progress, _job(sessions, job_id).message) == (0.0, "loading")
    now[0] += 1.0
    reporter.progress(0.2, "a second later")
    now[0] += 0.5
    reporter.progress(0.3, "half a second later")
    assert (_job(sessions, job_id).progress, _job(sessions, job_id).message) == (0.2, "a second later")
    reporter.done("finished", {"checkpoint": "x"})  # status changes are never held back
    assert _job(sessions, job_id).status is JobStatus.DONE
    with pytest.raises(InvalidInput, match="done already"):
        JobReporter(sessions, job_id, project_id)


def test_job_id_user_error_marks_the_job_failed_with_the_message(base, project_db, tmp_path, capsys):
    data_dir, sessions, project_id, _ = project_db
    job_id = _new_job(sessions, project_id)
    args = project_args(base, data_dir, tmp_path / "out", "--job-id", str(job_id), "--checkpoint", str(tmp_path / "no"))
    assert main(args) == 2
    err = capsys.readouterr().err
    job = _job(sessions, job_id)
    assert job.status is JobStatus.FAILED and job.pid == os.getpid() and job.finished_at is not None
    assert "meta.json is missing" in job.message and err == f"error: {job.message}\n"


def test_job_id_crash_marks_the_job_failed_before_exiting(base, project_db, tmp_path, monkeypatch):
    data_dir, sessions, project_id, _ = project_db
    job_id = _new_job(sessions, project_id)

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access\nwas encountered")

    monkeypatch.setattr("train.finetune.fit", crash)
    with pytest.raises(RuntimeError):
        main(project_args(base, data_dir, tmp_path / "out", "--job-id", str(job_id)))
    job = _job(sessions, job_id)
    assert job.status is JobStatus.FAILED
    assert job.message == "RuntimeError: CUDA error: an illegal memory access was encountered"


def test_job_id_of_another_project_or_finished_is_refused_untouched(base, project_db, tmp_path, capsys):
    data_dir, sessions, project_id, _ = project_db
    with sessions() as s:
        other = repo.get_project_by_name(s, "Empty").id
    foreign = _new_job(sessions, other)
    assert main(project_args(base, data_dir, tmp_path / "out", "--job-id", str(foreign))) == 2
    assert "belongs to another project" in capsys.readouterr().err
    assert _job(sessions, foreign).status is JobStatus.QUEUED and _job(sessions, foreign).pid is None
    assert main(project_args(base, data_dir, tmp_path / "out", "--job-id", "999")) == 2
    assert "There is no job with id 999" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(coco_args(base, tmp_path, tmp_path / "out", "--job-id", "1"))
    assert exit_info.value.code == 2 and "--job-id needs --project" in capsys.readouterr().err
