"""Text encoders: shapes, normalization, the disk cache, the open_clip route, synonym suggestions."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from resi_core.labels import ClassDef, LabelSpace
from resi_core.text import (
    PROMPT_TEMPLATES,
    CachedEncoder,
    TextEncoderError,
    get_text_encoder,
    parse_encoder_spec,
    suggest_synonyms,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class TableEncoder:
    """Hand-set vectors; counts how many names it was asked to encode."""

    id = "table"
    dim = 3

    def __init__(self, table: dict[str, list[float]]):
        self.table = table
        self.calls: list[str] = []

    def encode(self, names):
        self.calls += list(names)
        return F.normalize(torch.tensor([self.table[n] for n in names], dtype=torch.float32), dim=-1)


@pytest.fixture(scope="module")
def minilm():
    return get_text_encoder("minilm")


def test_minilm_shapes_normalization_and_meaning(minilm):
    emb = minilm.encode(["person", "pedestrian", "wheel"])
    assert emb.shape == (3, 384) and minilm.dim == 384 and minilm.id == "minilm"
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    person, pedestrian, wheel = emb
    assert person @ pedestrian > person @ wheel + 0.1


def test_minilm_suggests_person_pedestrian_but_not_wheel(minilm):
    street = LabelSpace("street", (ClassDef("person"), ClassDef("car")))
    drive = LabelSpace("drive", (ClassDef("pedestrian"), ClassDef("wheel")))
    pairs = suggest_synonyms(minilm, [street, drive], threshold=0.6)
    assert ("person", "street", "pedestrian", "drive") in [p[:4] for p in pairs]
    assert all("wheel" not in p[:4] or "person" not in p[:4] for p in pairs)


def test_suggestions_only_across_spaces_sorted_and_thresholded():
    enc = TableEncoder({"a": [1, 0, 0], "b": [1, 0.1, 0], "c": [0.9, 0.5, 0], "d": [0, 0, 1]})
    s1 = LabelSpace("s1", (ClassDef("a"), ClassDef("b")))
    s2 = LabelSpace("s2", (ClassDef("c"), ClassDef("d")))
    pairs = suggest_synonyms(enc, [s1, s2], threshold=0.8)
    assert [p[:4] for p in pairs] == [("b", "s1", "c", "s2"), ("a", "s1", "c", "s2")]  # a-b: same space
    assert pairs[0][4] >= pairs[1][4] >= 0.8


def test_cache_encodes_each_name_once_and_persists(tmp_path):
    table = {"cat": [1, 0, 0], "dog": [0, 1, 0], "cow": [0, 0, 1]}
    inner = TableEncoder(table)
    cached = CachedEncoder("table", lambda: inner, tmp_path)
    first = cached.encode(["cat", "dog"])
    again = cached.encode(["dog", "cat", "cow"])
    assert inner.calls == ["cat", "dog", "cow"]
    assert torch.equal(again[1], first[0]) and torch.equal(again[0], first[1])
    assert [p.name for p in tmp_path.iterdir()] == [cached.path.name]  # no temporary files left

    def never():
        raise AssertionError("a fully cached lookup must not build the encoder")

    reopened = CachedEncoder("table", never, tmp_path)
    assert torch.equal(reopened.encode(["cow", "cat"]), torch.stack([again[2], first[0]]))
    assert reopened.dim == 3
    other = CachedEncoder("other-id", lambda: TableEncoder(table), tmp_path)
    assert other.path != cached.path  # cached by (encoder id, name)


def test_corrupt_cache_is_rebuilt(tmp_path):
    cached = CachedEncoder("table", lambda: TableEncoder({"cat": [1, 0, 0]}), tmp_path)
    cached.path.write_bytes(b"not a safetensors file")
    assert cached.encode(["cat"]).shape == (1, 3)


def test_spec_parsing_and_errors():
    assert parse_encoder_spec("minilm") == ("minilm", None)
    assert parse_encoder_spec("open_clip:ViT-B-32:laion2b_s34b_b79k") == ("ViT-B-32", "laion2b_s34b_b79k")
    assert parse_encoder_spec("open_clip:local-dir:/m") == ("local-dir:/m", None)
    with pytest.raises(TextEncoderError):
        get_text_encoder("word2vec")


def test_open_clip_route_loads_local_weights(tmp_path):
    import open_clip

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-S-32", pretrained=None, **model_cfg).eval()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))

    encoder = get_text_encoder(f"open_clip:local-dir:{tmp_path}")
    emb = encoder.encode(["person", "car"])
    assert emb.shape == (2, 16) and encoder.dim == 16
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path}")
    with torch.no_grad():
        direct = F.normalize(reference.encode_text(tokenizer([t.format("car") for t in PROMPT_TEMPLATES])), dim=-1)
    assert torch.allclose(emb[1], F.normalize(direct.mean(0), dim=0), atol=1e-5)  # the saved weights were used


def test_only_local_safetensors_open_clip_specs_pass(tmp_path, monkeypatch):
    """A spec comes from a checkpoint's meta.json too: nothing may be downloaded or unpickled for it."""
    from resi_core.text import check_encoder_spec

    def no_network(*args, **kwargs):
        raise AssertionError("a connection was attempted")

    monkeypatch.setattr("socket.socket.connect", no_network)
    weights = tmp_path / "clip.safetensors"
    weights.write_bytes(b"checked later, when loaded")
    check_encoder_spec("minilm")
    check_encoder_spec(f"open_clip:ViT-B-32:{weights}")  # passes the check; loading reads it with safetensors
    pickled = tmp_path / "clip.pt"
    pickled.write_bytes(b"\x80\x04N.")
    for spec, reason in ((f"open_clip:ViT-B-32:{pickled}", "pickle formats"),
                         ("open_clip:ViT-B-32:openai", "pretrained tag, which would be downloaded"),
                         ("open_clip:ViT-B-32:laion2b_s34b_b79k", "would be downloaded"),
                         ("open_clip:hf-hub:org/model", "never downloads"),
                         ("open_clip:ViT-B-32", "names no weights"),
                         (f"open_clip:ViT-B-32:{tmp_path / 'missing.safetensors'}", "not a file"),
                         (f"open_clip:local-dir:{tmp_path}", "no open_clip_config.json")):
        with pytest.raises(TextEncoderError, match=reason):
            get_text_encoder(spec, cache_dir=tmp_path / "cache")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"text_cfg": {"hf_model_name": "org/bert"}}}))
    with pytest.raises(TextEncoderError, match="would be downloaded"):
        check_encoder_spec(f"open_clip:local-dir:{tmp_path}")
