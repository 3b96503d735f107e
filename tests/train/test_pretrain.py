"""`python -m train pretrain`: a few steps on hand-made COCO data, resume, errors, 2-process DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resi_core.model import load_checkpoint, read_meta
from tests.resi_core.test_model_data import write_tiny_coco
from train.pretrain import main

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "world_tiny.json"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    for name in ("street", "portrait"):
        write_tiny_coco(root / name, name, n_images=4)
    return root


def _args(data_root: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", str(TINY_CONFIG), "--data-root", str(data_root), "--out", str(out), "--no-progress", *extra]


def test_pretrain_writes_checkpoints_and_resumes(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(_args(data_root, out, "--iterations", "2", "--threads", "1")) == 0
    assert (out / "latest").read_text() == "step_0000002"
    meta = read_meta(out / "step_0000002")
    assert meta["training"]["step"] == 2 and meta["text_encoder"] == "minilm"
    first = load_checkpoint(out / "step_0000002", text_encoder_id="minilm")
    assert list(first.label_spaces) == ["street", "portrait"]
    # The finished run's domain head was fitted on both datasets (a fifth of the images held out).
    assert first.domain_spaces == ["street", "portrait"]
    assert set(meta["training"]["domain_head"]["held_out_accuracy"]) == {"street", "portrait"}

    assert main(_args(data_root, out, "--iterations", "3", "--threads", "1", "--resume")) == 0
    assert (out / "latest").read_text() == "step_0000003"
    assert read_meta(out / "step_0000003")["training"]["step"] == 3
    printed = capsys.readouterr().out
    assert "step 3/3" in printed and "step 2/3" not in printed  # resumed at step 2, not from scratch
    resumed = load_checkpoint(out / "step_0000003")
    assert any((a != b).any() for a, b in zip(first.parameters(), resumed.parameters(), strict=True))
    assert "domain_head" in read_meta(out / "step_0000003")["training"]  # refitted on the new features

    # Starting afresh into a folder that holds a run is refused: it would mix two runs' checkpoints.
    assert main(_args(data_root, out, "--iterations", "3", "--threads", "1")) == 2
    assert "already holds checkpoints" in capsys.readouterr().err and (out / "step_0000003").is_dir()

    # The same data with another method must not resume from this run.
    assert main(_args(data_root, out, "--iterations", "4", "--method", "merged_m2f", "--resume")) == 2
    assert "different model config" in capsys.readouterr().err


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    assert main(_args(tmp_path / "nothing", tmp_path / "run", "--iterations", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: dataset:") and "no instances file" in err


def test_unknown_config_key_is_an_error(tmp_path, capsys):
    config = json.loads(TINY_CONFIG.read_text())
    config["iterationz"] = 3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path)]) == 2
    assert "iterationz" in capsys.readouterr().err


def test_demo_config_parses():
    from train.pretrain import TrainConfig

    config = TrainConfig.from_json(json.loads((ROOT / "configs" / "world_demo.json").read_text()))
    assert [d.name for d in config.datasets] == ["street", "portrait", "drive", "parts"]
    assert config.model.feature_size % 32 == 0
    # The config says how the committed demo was trained: it must build the demo's architecture.
    demo = json.loads((ROOT / "checkpoints" / "demo" / "meta.json").read_text())["config"]
    for key in ("max_size", "upscale", "num_queries", "hidden_size", "backbone_channels", "decoder_layers"):
        value = getattr(config.model, key)
        assert (list(value) if isinstance(value, tuple) else value) == demo[key], key
    assert config.domain_head_images == 0  # fitted afterwards on single-domain data: every dataset has every scene


@pytest.mark.slow
def test_ddp_two_cpu_processes(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "train", "pretrain", *_args(data_root, out, "--iterations", "2", "--method", "merged_m2f")]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "latest").read_text() == "step_0000002"
    model = load_checkpoint(out / "step_0000002")
    assert model.config.classifier == "linear" and model.config.query_mode == "shared"
    assert model.domain_spaces == ["street", "portrait"]  # fitted once, after the process group ended


@pytest.mark.parametrize("key,value,message", [("scale_range", [2.0, 1.0], "scale_range"),
                                               ("scale_range", [0, 1.0], "scale_range"),
                                               ("scale_range", 1.0, "scale_range"),
                                               ("scale_range", [1, 2, 3], "scale_range"),
                                               ("erase_prob", 1.5, "erase_prob"),
                                               ("erase_prob", None, "erase_prob"),
                                               ("erase_prob", "0.5", "erase_prob"),
                                               ("domain_head_images", 1, "domain_head_images"),
                                               ("domain_head_images", "many", "domain_head_images"),
                                               ("query_lr_scale", 0, "query_lr_scale"),
                                               ("query_lr_scale", "10", "query_lr_scale")])
def test_bad_augmentation_settings_are_one_clear_error(tmp_path, capsys, key, value, message):
    config = json.loads(TINY_CONFIG.read_text())
    config[key] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    assert main(["--config", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_augmentation_settings_parse():
    from train.pretrain import TrainConfig

    config = json.loads(TINY_CONFIG.read_text())
    config.update(scale_range=[0.3, 3], erase_prob=0.5)
    parsed = TrainConfig.from_json(config)
    assert parsed.scale_range == (0.3, 3.0) and parsed.erase_prob == 0.5


def test_query_lr_scale_speeds_up_the_query_sets_only(data_root, tmp_path):
    """Adam's first step moves every parameter by lr·sign(grad), so with query_lr_scale = 20 the query
    sets of two runs from the same seed and batch end 19·lr apart after one step, all else equal."""
    from safetensors.torch import load_file

    from train.pretrain import TrainConfig, learning_rate_factor

    weights = {}
    for scale in (1, 20):
        config = json.loads(TINY_CONFIG.read_text())
        config.update(query_lr_scale=scale, domain_head_images=0, weight_decay=0.0)
        path = tmp_path / f"scale{scale}.json"
        path.write_text(json.dumps(config))
        out = tmp_path / f"run{scale}"
        assert main(["--config", str(path), "--data-root", str(data_root), "--out", str(out), "--no-progress",
                     "--iterations", "1", "--threads", "1"]) == 0
        weights[scale] = load_file(out / "step_0000001" / "model.safetensors")
    parsed = TrainConfig.from_json({**config, "iterations": 1})
    step = parsed.lr * learning_rate_factor(0, parsed)
    for name, value in weights[1].items():
        gap = (weights[20][name] - value).abs()
        if name.startswith("query_sets."):
            assert float(gap.median()) == pytest.approx(19 * step, rel=0.05), name
        else:
            assert float(gap.max()) == 0.0, name


def test_run_saved_with_one_optimizer_group_resumes(data_root, tmp_path, capsys):
    """Runs saved before the query sets had their own AdamW group resume with fresh moments."""
    import torch

    out = tmp_path / "run"
    assert main(_args(data_root, out, "--iterations", "1", "--threads", "1")) == 0
    trainer = out / "step_0000001" / "trainer.pt"
    state = torch.load(trainer, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    merged = {**groups[0], "params": sorted(p for g in groups for p in g["params"])}
    merged.pop("lr_scale")
    state["optimizer"]["param_groups"] = [merged]
    torch.save(state, trainer)
    assert main(_args(data_root, out, "--iterations", "2", "--threads", "1", "--resume")) == 0
    assert "AdamW's moments restart" in capsys.readouterr().err
    assert (out / "latest").read_text() == "step_0000002"


def test_init_from_copies_weights_and_grows_the_queries(data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tmp_path / "base"
    assert main(_args(data_root, base, "--iterations", "1", "--threads", "1")) == 0
    source = load_checkpoint(base / "step_0000001")
    config = json.loads(TINY_CONFIG.read_text())
    queries = config["model"]["num_queries"]
    config["model"].update(num_queries=queries + 3, max_size=config["model"]["max_size"] * 2, upscale=True)
    config.update(init_from=str(base / "step_0000001"), domain_head_images=0)
    grown_config = tmp_path / "grown.json"
    grown_config.write_text(json.dumps(config))
    out = tmp_path / "grown"
    args = ["--config", str(grown_config), "--data-root", str(data_root), "--out", str(out), "--no-progress"]
    assert main([*args, "--iterations", "1", "--threads", "1"]) == 0
    # One step at the warm-up's smallest learning rate moves weights far less than re-initializing would:
    # every shared weight stays close to the source's, and the first rows of each query set are the source's.
    grown = load_checkpoint(out / "step_0000001")
    assert grown.config.num_queries == queries + 3 and read_meta(out / "step_0000001")["training"]["init_from"]
    before, after = source.state_dict(), grown.state_dict()
    backbone = "mask2former.pixel_level_module.encoder.embedder.embedder.convolution.weight"
    assert (after[backbone] - before[backbone]).abs().max() < 0.1 * before[backbone].abs().max()
    rows = after["query_sets.0"]
    assert rows.shape[0] == queries + 3
    assert (rows[:queries] - before["query_sets.0"]).abs().max() < 0.1 * before["query_sets.0"].abs().max()
    # The added rows are copies of the first ones plus noise: near them, never equal to them.
    extra = rows[queries:] - before["query_sets.0"][:3]
    assert extra.abs().max() > 0 and extra.abs().max() < before["query_sets.0"].abs().max()


def test_init_from_another_architecture_is_one_clear_error(data_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = tmp_path / "base"
    assert main(_args(data_root, base, "--iterations", "1", "--threads", "1")) == 0
    config = json.loads(TINY_CONFIG.read_text())
    config["model"]["hidden_size"] *= 2
    config.update(init_from=str(base / "step_0000001"), domain_head_images=0)
    path = tmp_path / "other.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "other"
    assert main(["--config", str(path), "--data-root", str(data_root), "--out", str(out), "--no-progress",
                 "--iterations", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint: init_from") and "only the number of queries may differ" in err
