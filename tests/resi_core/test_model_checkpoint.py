"""Checkpoints: round trip, each error, and building from a pretrained Mask2Former folder."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import CheckpointError, build_model, load_checkpoint, read_meta, save_checkpoint
from resi_core.model.build import mask2former_config
from resi_core.model.config import merged_m2f
from tests.resi_core.test_model import PORTRAIT, STREET, TINY, TableEncoder, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model().eval()
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "run", model, {"step": 7})
    return model, folder


@torch.no_grad()
def test_round_trip_restores_weights_spaces_and_embeddings(saved):
    model, folder = saved
    loaded = load_checkpoint(folder, text_encoder_id="table").eval()
    assert list(loaded.label_spaces.values()) == [STREET, PORTRAIT]
    assert loaded.config == model.config
    assert torch.equal(loaded.class_embeddings("portrait"), model.class_embeddings("portrait"))
    pixels = torch.randn(1, 3, 64, 64)
    expected = model.decode(model.encode(pixels), ["portrait"])
    actual = loaded.decode(loaded.encode(pixels), ["portrait"])
    assert torch.allclose(actual.masks_queries_logits, expected.masks_queries_logits, atol=1e-5)
    meta = read_meta(folder)
    assert meta["version"] == 1 and meta["text_encoder"] == "table" and meta["training"] == {"step": 7}
    assert "git_commit" in meta and [s["name"] for s in meta["label_spaces"]] == ["street", "portrait"]


def test_added_label_space_and_linear_head_survive_round_trip(tmp_path):
    model = tiny_model()
    model.add_label_space(LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"))), TableEncoder())
    loaded = load_checkpoint(save_checkpoint(tmp_path / "a", model))
    assert list(loaded.label_spaces) == ["street", "portrait", "drive"]
    assert torch.equal(loaded.query_set("drive"), model.query_set("drive"))

    merged = tiny_model(merged_m2f(TINY))
    loaded = load_checkpoint(save_checkpoint(tmp_path / "b", merged))
    assert loaded.union_names == merged.union_names
    assert torch.equal(loaded.linear_head.weight, merged.linear_head.weight)


def test_other_text_encoder_is_refused(saved):
    with pytest.raises(CheckpointError, match="text encoder 'table', not 'minilm'"):
        load_checkpoint(saved[1], text_encoder_id="minilm")


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def test_truncated_weights_are_refused(saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(folder)


def test_garbage_weights_are_refused(saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x80\x04pickle? no thanks" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(folder)


def test_missing_or_corrupt_meta_is_refused(saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(folder)
    (folder / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        load_checkpoint(folder)


@pytest.mark.parametrize("key,value,message", [("version", 99, "version 99"), ("domain_spaces", 3, "domain_spaces")])
def test_bad_meta_values_are_refused(saved, tmp_path, key, value, message):
    folder = _copy(saved[1], tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta[key] = value
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


def test_weights_not_matching_meta_are_refused(saved, tmp_path):
    folder = _copy(saved[1], tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    meta["label_spaces"] = meta["label_spaces"][:1]
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its metadata"):
        load_checkpoint(folder)


def test_pretrained_folder_route_loads_its_weights(tmp_path):
    from transformers import Mask2FormerForUniversalSegmentation

    torch.manual_seed(1)
    source = Mask2FormerForUniversalSegmentation(mask2former_config(TINY))
    source.save_pretrained(tmp_path / "m2f")
    reference = source.state_dict()

    config = dataclasses.replace(TINY, pretrained=str(tmp_path / "m2f"), backbone_norm="frozen_batch")
    model = build_model(config, [STREET, PORTRAIT], TableEncoder())
    mine = model.mask2former.state_dict()
    for key in (
        "transformer_module.decoder.layers.0.cross_attn.in_proj_weight",
        "transformer_module.queries_embedder.weight",
        "pixel_level_module.decoder.encoder.layers.0.self_attn.value_proj.weight",
        "pixel_level_module.encoder.embedder.embedder.convolution.weight",
        "pixel_level_module.encoder.embedder.embedder.normalization.running_var",
    ):
        assert torch.equal(mine[key], reference[f"model.{key}"]), key
    queries = reference["model.transformer_module.queries_features.weight"]
    assert all(torch.equal(q, queries) for q in model.query_sets)  # LSQEs start from the pretrained set
    scratch = build_model(TINY, [STREET], TableEncoder())
    assert not torch.equal(scratch.query_sets[0], queries)

    loaded = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model))  # no second from_pretrained needed
    assert torch.equal(loaded.query_set("street"), model.query_set("street"))

    with pytest.raises(ValueError, match="num_queries"):
        build_model(dataclasses.replace(config, num_queries=7), [STREET], TableEncoder())


def test_domain_head_survives_round_trip_and_old_checkpoints_have_none(saved, tmp_path):
    model = tiny_model().eval()
    assert load_checkpoint(saved[1]).domain_head is None  # saved without one
    weight = torch.randn(2, model.pooled_dim())
    model.set_domain_head(["portrait", "street"], weight, torch.tensor([0.5, -0.5]))
    assert not any(p.requires_grad for p in model.domain_head.parameters())  # never trained by the loss
    loaded = load_checkpoint(save_checkpoint(tmp_path / "dh", model)).eval()
    assert loaded.domain_spaces == ["portrait", "street"]
    assert torch.equal(loaded.domain_head.weight, weight)
    features = loaded.encode(torch.randn(2, 3, 64, 64))
    probs = loaded.domain_probs(features)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2))
    assert torch.allclose(probs, model.domain_probs(features), atol=1e-6)


@pytest.mark.parametrize("spaces,shape,message", [(["street"], (1, None), "two or more"),
                                                  (["street", "nowhere"], (2, None), "two or more"),
                                                  (["street", "portrait"], (2, 3), "do not fit")])
def test_bad_domain_heads_are_refused(spaces, shape, message):
    model = tiny_model()
    rows, cols = shape
    with pytest.raises(ValueError, match=message):
        model.set_domain_head(spaces, torch.zeros(rows, cols or model.pooled_dim()), torch.zeros(rows))


def _with_drive_and_head():
    """street, portrait (known to a hand-set head) and drive (added later, unknown to the head)."""
    model = tiny_model().eval()
    model.add_label_space(LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"))), TableEncoder())
    model.set_domain_head(["street", "portrait"], torch.randn(2, model.pooled_dim()), torch.zeros(2))
    return model


def test_inherited_domains_survive_round_trip_and_old_checkpoints_have_none(saved, tmp_path):
    model = _with_drive_and_head()
    model.set_space_domain("drive", "street")
    folder = save_checkpoint(tmp_path / "sd", model)
    assert read_meta(folder)["space_domains"] == {"drive": "street"}
    assert load_checkpoint(folder).space_domains == {"drive": "street"}
    meta = json.loads((folder / "meta.json").read_text())
    del meta["space_domains"]  # as saved before finetune recorded it
    (folder / "meta.json").write_text(json.dumps(meta))
    assert load_checkpoint(folder).space_domains == {}
    assert load_checkpoint(saved[1]).space_domains == {}


def test_setting_an_inherited_domain_is_checked_and_a_refit_head_drops_stale_ones():
    model = _with_drive_and_head()
    for space, domain, message in [("nowhere", "street", "Unknown label space"),
                                   ("drive", "drive", "not one of the domain head's"),
                                   ("portrait", "street", "domain of its own")]:
        with pytest.raises(ValueError, match=message):
            model.set_space_domain(space, domain)
    assert model.space_domains == {}
    model.set_space_domain("drive", "portrait")
    model.set_domain_head(["street", "portrait"], torch.zeros(2, model.pooled_dim()), torch.zeros(2))
    assert model.space_domains == {"drive": "portrait"}  # still a domain of the head: kept
    model.set_domain_head(["street", "drive"], torch.zeros(2, model.pooled_dim()), torch.zeros(2))
    assert model.space_domains == {}  # drive has its own domain now, and portrait is gone
    model.set_space_domain("drive", None)  # removing none is fine
    assert tiny_model().space_domains == {}


@pytest.mark.parametrize("value,message", [
    (["drive", "street"], "must map label space names"),
    ({"drive": 3}, "must map label space names"),
    ({"nowhere": "street"}, "Unknown label space 'nowhere'"),
    ({"drive": "drive"}, "not one of the domain head's"),
    ({"portrait": "street"}, "domain of its own"),
])
def test_bad_inherited_domains_in_meta_are_refused(tmp_path, value, message):
    folder = save_checkpoint(tmp_path / "sd", _with_drive_and_head())
    meta = json.loads((folder / "meta.json").read_text())
    meta["space_domains"] = value
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"invalid contents: space_domains.*{message}"):
        load_checkpoint(folder)


def test_inherited_domains_without_a_head_are_refused(tmp_path):
    model = tiny_model()
    model.add_label_space(LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("vehicle"))), TableEncoder())
    folder = save_checkpoint(tmp_path / "sd", model)
    meta = json.loads((folder / "meta.json").read_text())
    meta["space_domains"] = {"drive": "street"}
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="space_domains.*no head"):
        load_checkpoint(folder)


def test_checkpoint_files_are_readable_by_the_team(saved):
    import stat

    for name in ("model.safetensors", "meta.json"):
        mode = stat.S_IMODE((saved[1] / name).stat().st_mode)
        assert mode & 0o044 == 0o044, (name, oct(mode))  # group and others may read


def test_an_interrupted_head_rewrite_leaves_a_usable_checkpoint(tmp_path):
    """Weights are replaced before meta.json: head weights that meta.json does not list are ignored."""
    model = tiny_model().eval()
    folder = save_checkpoint(tmp_path / "a", model)
    old_meta = (folder / "meta.json").read_text()
    model.set_domain_head(["street", "portrait"], torch.randn(2, model.pooled_dim()), torch.zeros(2))
    save_checkpoint(folder, model)
    (folder / "meta.json").write_text(old_meta)  # as if the process died between the two files
    loaded = load_checkpoint(folder)
    assert loaded.domain_head is None and loaded.domain_spaces == []


def test_rewriting_a_checkpoint_can_keep_its_git_commit(saved, tmp_path):
    folder = save_checkpoint(tmp_path / "b", tiny_model(), git_commit="abc123")
    assert read_meta(folder)["git_commit"] == "abc123"
