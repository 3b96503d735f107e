"""`python -m train pretrain --config CONFIG`: train a RESI model (or a baseline) on COCO datasets.

Config JSON (see configs/world_demo.json):
  datasets: [{"name": label space, "images": folder, "instances": COCO json}], paths under data_root
  data_root, out, model (RESIConfig fields), method (resi | text_m2f | merged_m2f | resi_linear),
  iterations, batch_size, lr, weight_decay, warmup, grad_clip, seed, device (auto|cpu|cuda),
  amp (bf16 autocast on CUDA), checkpoint_every, text_cache, threads, scale_range (random rescale,
  default [0.75, 1.5]), crop_size (side of the random training crop, default max_size), erase_prob
  (random erasing, 0), query_lr_scale (learning-rate multiplier of
  the content query sets, 1), domain_head_images (per dataset for the domain head, 1000; 0 = none),
  init_from (a checkpoint folder whose weights start the run instead of random ones; see `warm_start`).
Checkpoints go to OUT/step_NNNNNNN (model.safetensors, meta.json, trainer.pt); OUT/latest names the
newest. Distributed: `torchrun --nproc_per_node N -m train pretrain ...` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from resi_core.data import Batch, CocoDataset, DatasetError, MixedSampler, class_names_match
from resi_core.model import (
    METHODS,
    CheckpointError,
    LossOutput,
    RESIConfig,
    RESICriterion,
    RESIModel,
    Target,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from resi_core.model.checkpoint import read_meta
from resi_core.model.config import known_fields
from resi_core.text import encoder_id, get_text_encoder
from train.domain import add_domain_head, read_json
from train.threads import use_threads

TRAINER_FILE = "trainer.pt"
LATEST_FILE = "latest"
KEEP_CHECKPOINTS = 2


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    images: str
    instances: str


@dataclass(frozen=True)
class TrainConfig:
    datasets: tuple[DatasetSpec, ...]
    model: RESIConfig
    out: str
    data_root: str = "."
    method: str = "resi"
    iterations: int = 1000
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    checkpoint_every: int = 500
    text_cache: str | None = None
    # CPU threads per process; None keeps torch's default. On a busy machine, 1 is often much faster:
    # small ops then never wait for a descheduled OpenMP thread.
    threads: int | None = None
    # Random scale of each training image (1 = its long side fits max_size), then a random crop.
    scale_range: tuple[float, float] = (0.75, 1.5)
    # Side of that crop in px (a multiple of 32, at most max_size); None = max_size. A smaller crop trains at
    # the inference scale for a fraction of the compute (the demo: 128 px crops of images scaled to 256).
    crop_size: int | None = None
    # Probability of random erasing per training image (resi_core.data.erase); 0 = off.
    erase_prob: float = 0.0
    # Learning-rate multiplier for the content query sets (LSQEs, or the baselines' one shared set). They
    # start from one N(0, 1) initializer and at the base rate move little in a short run; on the bench
    # world 1 is best (10x and 0.1x: docs/BENCH.md).
    query_lr_scale: float = 1.0
    # After the last step, fit the domain head (train/domain.py) on this many images per dataset; 0 = off.
    domain_head_images: int = 1000
    # A checkpoint folder (same label spaces and architecture; the number of queries and max_size may
    # differ) whose weights start the run instead of random ones. The demo model starts from the bench's.
    init_from: str | None = None

    @staticmethod
    def from_json(data: dict[str, Any]) -> TrainConfig:
        values = known_fields(TrainConfig, data, "config", ignored=frozenset({"comment"}))
        values["datasets"] = tuple(DatasetSpec(**d) for d in data.get("datasets", []))
        if not values["datasets"]:
            raise ValueError("The config lists no datasets.")
        values["model"] = RESIConfig.from_json(data.get("model", {}))
        if values.get("crop_size") is not None and values["crop_size"] > values["model"].max_size:
            raise ValueError(f"crop_size {values['crop_size']} is larger than the model's max_size "
                             f"{values['model'].max_size}.")
        if "scale_range" in values:
            scale = values["scale_range"]
            if (not isinstance(scale, list | tuple) or len(scale) != 2
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in scale)
                    or not 0 < scale[0] <= scale[1]):
                raise ValueError(f"scale_range must be two numbers 0 < low <= high, got {scale!r}.")
            values["scale_range"] = (float(scale[0]), float(scale[1]))
        crop = values.get("crop_size")
        if crop is not None and (not isinstance(crop, int) or isinstance(crop, bool) or crop < 32 or crop % 32):
            raise ValueError(f"crop_size must be a multiple of 32 (at least 32), got {crop!r}.")
        erase = values.get("erase_prob", 0.0)
        if not isinstance(erase, int | float) or isinstance(erase, bool) or not 0 <= erase <= 1:
            raise ValueError(f"erase_prob must be a number between 0 and 1, got {erase!r}.")
        scale = values.get("query_lr_scale", 1.0)
        if not isinstance(scale, int | float) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(f"query_lr_scale must be a positive number, got {scale!r}.")
        images = values.get("domain_head_images", 0)
        if not isinstance(images, int) or isinstance(images, bool) or images < 0 or images == 1:
            raise ValueError(f"domain_head_images must be 0 (no domain head) or at least 2, got {images!r}.")
        return TrainConfig(**values)


class TrainStep(nn.Module):
    """Model + criterion in one forward, so DDP sees every parameter the loss uses."""

    def __init__(self, model: RESIModel, criterion: RESICriterion):
        super().__init__()
        self.model = model
        self.criterion = criterion

    def forward(self, pixel_values: torch.Tensor, targets: list[Target]) -> LossOutput:
        output = self.model(pixel_values, [t.space for t in targets])
        return self.criterion(self.model, output, targets)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train pretrain",
        description="Train RESI (or a baseline, --method) on several COCO-format datasets, one label "
        "space each. Batches mix datasets; each image is supervised in its own label space only.",
    )
    parser.add_argument("--config", required=True, help="training config JSON (see configs/)")
    parser.add_argument("--out", help="output folder (overrides the config)")
    parser.add_argument("--data-root", help="folder the dataset paths are relative to (overrides the config)")
    parser.add_argument("--method", choices=sorted(METHODS), help="resi or a baseline (overrides the config)")
    parser.add_argument("--iterations", type=int, help="total optimizer steps (overrides the config)")
    parser.add_argument("--batch-size", type=int, help="images per step and process (overrides the config)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config")
    parser.add_argument("--seed", type=int, help="overrides the config")
    parser.add_argument("--threads", type=int, help="CPU threads per process (overrides the config)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/latest (weights, optimizer, step)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs a line per checkpoint)")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> TrainConfig:
    config = TrainConfig.from_json(read_json(args.config))
    overrides = {
        "out": args.out,
        "data_root": args.data_root,
        "method": args.method,
        "iterations": args.iterations,
        "batch_size": args.batch_size,
        "device": args.device,
        "seed": args.seed,
        "threads": args.threads,
    }
    return with_method(dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None}))


def with_method(config: TrainConfig) -> TrainConfig:
    """The config with its model's classifier, query mode and negatives set by `config.method`."""
    if config.method not in METHODS:
        raise ValueError(f"Unknown method {config.method!r}; choose from {sorted(METHODS)}.")
    return dataclasses.replace(config, model=METHODS[config.method](config.model))


def setup_distributed(device_kind: str) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def pick_device(kind: str) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but CUDA is not available.")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then poly(0.9) decay to zero at `iterations`."""
    if step < config.warmup:
        return (step + 1) / config.warmup
    return max(0.0, 1.0 - step / max(config.iterations, 1)) ** 0.9


def latest_checkpoint(out: Path) -> Path | None:
    pointer = out / LATEST_FILE
    if not pointer.is_file():
        return None
    folder = out / pointer.read_text(encoding="utf-8").strip()
    return folder if folder.is_dir() else None


def checkpoint_step(checkpoint: Path) -> int:
    """The training step a checkpoint folder was written at (0 if it does not say)."""
    return int((read_meta(checkpoint).get("training") or {}).get("step", 0))


def domain_head_fitted(checkpoint: Path) -> bool:
    """Whether a domain head was fitted into this checkpoint after its training (a checkpoint written by
    training has no "domain_head" record, even when a resumed run carried an older head)."""
    return "domain_head" in (read_meta(checkpoint).get("training") or {})


def write_checkpoint(out: Path, model: RESIModel, optimizer, step: int, config: TrainConfig, it_s: float) -> Path:
    folder = out / f"step_{step:07d}"
    info = {
        "step": step,
        "iterations": config.iterations,
        "method": config.method,
        "batch_size": config.batch_size,
        "datasets": [dataclasses.asdict(d) for d in config.datasets],
        "iterations_per_second": round(it_s, 3),
        "init_from": config.init_from,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    save_checkpoint(folder, model, info)
    torch.save({"step": step, "optimizer": optimizer.state_dict()}, folder / TRAINER_FILE)
    tmp = out / f".{LATEST_FILE}.tmp"
    tmp.write_text(folder.name, encoding="utf-8")
    os.replace(tmp, out / LATEST_FILE)
    # Zero-padded names sort by step; never prune anything newer than what was just written.
    for old in sorted(p for p in out.glob("step_*") if p.name <= folder.name)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def warm_start(model: RESIModel, source: Path, seed: int) -> None:
    """Copy the weights of checkpoint `source` into `model` (built with random weights).

    Every weight must have the same shape, except the query rows: a query set (and the shared positional
    query embeddings) with more rows than the source's takes the source's rows in turn, plus Gaussian
    noise of 10 % of their spread so that the copies can learn apart. The source's domain head is left
    out: features change in training, and the finished run fits a new one.
    """
    trained = load_checkpoint(source, text_encoder_id=model.config.text_encoder if model.config.classifier == "text"
                              else None)
    if list(trained.label_spaces) != list(model.label_spaces) or not all(
        class_names_match(a, b) for a, b in zip(trained.label_spaces.values(), model.label_spaces.values(), strict=True)
    ):
        raise CheckpointError(f"init_from {source} was trained on other label spaces than this config's datasets.")
    have = trained.state_dict()
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, target in model.state_dict().items():
        if name not in have:
            raise CheckpointError(f"init_from {source} has no weight {name!r}: another architecture.")
        weight = have[name]
        grows = name.startswith("query_sets.") or name.endswith("queries_embedder.weight")
        if weight.shape != target.shape and grows and weight.shape[1:] == target.shape[1:]:
            rows = weight[torch.arange(target.shape[0]) % weight.shape[0]].clone()  # [Q, D]
            noise = torch.randn(rows.shape, generator=generator) * 0.1 * weight.std()
            rows[weight.shape[0]:] += noise[weight.shape[0]:]
            weight = rows
        if weight.shape != target.shape:
            raise CheckpointError(f"init_from {source}: {name} has shape {tuple(weight.shape)}, this model's "
                                  f"{tuple(target.shape)}; only the number of queries may differ.")
        state[name] = weight
    model.load_state_dict(state)


def build_or_resume(config: TrainConfig, spaces, resume_from: Path | None) -> tuple[RESIModel, int, dict | None]:
    if resume_from is not None:
        model = load_checkpoint(resume_from, text_encoder_id=encoder_id(config.model.text_encoder))
        trained = list(model.label_spaces.values())
        if [s.name for s in trained] != [s.name for s in spaces] or not all(
            class_names_match(a, b) for a, b in zip(trained, spaces, strict=True)
        ):
            raise CheckpointError(f"{resume_from} was trained on other label spaces than this config's datasets.")
        if model.config != config.model:
            raise CheckpointError(f"{resume_from} has a different model config than this run.")
        trainer = torch.load(resume_from / TRAINER_FILE, map_location="cpu", weights_only=True)
        # A domain head fitted on the old features would be stale in the checkpoints this run writes;
        # the finished run fits a new one.
        model.domain_head, model.domain_spaces = None, []
        return model, int(trainer["step"]), trainer["optimizer"]
    encoder = None
    if config.model.classifier == "text":
        cache = Path(config.text_cache) if config.text_cache else None
        encoder = get_text_encoder(config.model.text_encoder, cache_dir=cache)
    model = build_model(config.model, spaces, encoder)
    if config.init_from:
        warm_start(model, Path(config.init_from), config.seed)
    return model, 0, None


def train(config: TrainConfig, resume: bool, progress: bool, bar_position: int = 0) -> int:
    use_threads(config.threads)
    device = pick_device(config.device)
    rank, world = setup_distributed(device.type)
    torch.manual_seed(config.seed)  # identical initial weights on every rank
    root = Path(config.data_root)
    datasets = [CocoDataset(d.name, root / d.images, root / d.instances) for d in config.datasets]
    sampler = MixedSampler(datasets, size=config.model.max_size, seed=config.seed + 1000 * rank,
                           scale_range=config.scale_range, erase_prob=config.erase_prob, crop=config.crop_size)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)

    resume_from = latest_checkpoint(out) if resume else None
    if resume and resume_from is None and rank == 0:
        print(f"No checkpoint in {out}; starting from scratch.", file=sys.stderr)
    if not resume and any(out.glob("step_*")):
        raise ValueError(f"{out} already holds checkpoints of a run; pass --resume to continue it, "
                         "or choose another --out.")
    model, start, optimizer_state = build_or_resume(config, sampler.label_spaces, resume_from)
    if start:  # a resumed run draws new batches instead of replaying the first ones from the seed
        sampler.rng = np.random.default_rng([config.seed, rank, start])
    model.to(device).train()
    step_module: nn.Module = TrainStep(model, RESICriterion(model)).to(device)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=True)
    params = [p for p in model.parameters() if p.requires_grad]
    queries = {id(p) for p in model.query_sets}
    groups = [{"params": [p for p in params if id(p) not in queries], "lr_scale": 1.0},
              {"params": [p for p in params if id(p) in queries], "lr_scale": config.query_lr_scale}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except ValueError:  # a run saved before the query sets had their own parameter group
            if rank == 0:
                print("The checkpoint's optimizer state has another layout; AdamW's moments restart.",
                      file=sys.stderr)
    use_amp = config.amp and device.type == "cuda"

    bar = None
    if progress and rank == 0:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, initial=start, desc=f"pretrain {config.method}", unit="it",
                   dynamic_ncols=True, position=bar_position)
    window_start, window_steps, it_s = time.perf_counter(), 0, 0.0
    for step in range(start, config.iterations):
        batch: Batch = sampler.batch(config.batch_size)
        targets = [Target(t.space, t.masks.to(device), t.labels.to(device)) for t in batch.targets]
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_scale"] * learning_rate_factor(step, config)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = step_module(batch.pixel_values.to(device), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        window_steps += 1
        it_s = window_steps / max(time.perf_counter() - window_start, 1e-9)
        if bar is not None:
            bar.set_postfix(loss=f"{loss.total.item():.2f}", ce=f"{loss.parts['ce'].item():.2f}", refresh=False)
            bar.update(1)
        done = step + 1
        if rank == 0 and (done % config.checkpoint_every == 0 or done == config.iterations):
            folder = write_checkpoint(out, model, optimizer, done, config, it_s)
            if bar is None:
                print(f"step {done}/{config.iterations} loss {loss.total.item():.3f} {it_s:.2f} it/s -> {folder}")
    if bar is not None:
        bar.close()
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    # The domain head is fitted after the process group is gone, so no rank waits on it (rank 0 only,
    # on the training device), once per finished run.
    final = latest_checkpoint(out)
    if rank == 0 and config.domain_head_images > 0 and len(datasets) > 1 and final is not None:
        if checkpoint_step(final) == config.iterations and not domain_head_fitted(final):
            accuracy = add_domain_head(final, datasets, config.domain_head_images, progress=progress, device=device)
            merged = (read_meta(final).get("training") or {}).get("domain_head", {}).get("same_domain", {})
            print(f"domain head ({config.method}): held-out accuracy "
                  + ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items())
                  + "".join(f"; {s} is {d}'s domain" for s, d in merged.items()), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args)
        return train(config, resume=args.resume, progress=not args.no_progress)
    except (ValueError, OSError) as err:  # DatasetError, CheckpointError, config errors, missing files
        kind = "dataset" if isinstance(err, DatasetError) else "checkpoint" if isinstance(err, CheckpointError) else ""
        print(f"error: {kind + ': ' if kind else ''}{err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
