"""`python -m train bench --config CONFIG`: RESI against the baselines on the mixed benchmarks M1-M4.

Every method is trained on the same generated source datasets with the same budget and seed
(SPEC §6), then evaluated on each mixed benchmark with mIoU, PQ, AP and PIQ:
- Merged-M2F and Text-M2F (one shared query set): evaluated with the two fair inference rules of
  SPEC §6, (a) non-overlapping panoptic inference over the union and (b) overlapping instance-style
  inference, plus (c) Mask2Former's semantic inference over the union (its own rule for mIoU), each
  also in a domain-aware variant; each metric reports the best rule;
- RESI with ESF-OMI: PQ and PIQ of its segments, AP of its per-pass instance lists, mIoU of its
  per-pass semantic maps (Mask2Former scores each task on that task's inference);
- RESI without ESF-OMI: the same RESI weights under the baselines' rules, best of them;
- the ablations: RESI with a linear class head instead of text embeddings, with ESF-OMI; and RESI
  without LSQEs: Text-M2F's weights (one shared query set, trained like RESI otherwise) under
  ESF-OMI, one pass per label space, each classified over its own classes.
The table is written as Markdown and JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from formats.coco import GroundTruth, Prediction, load_ground_truth
from formats.images import decode_image
from formats.rle import encode_mask
from resi_core.labels import MixedLabelSpace, normalize_name
from resi_core.metrics import APResult, evaluate, mask_ap
from resi_core.metrics import miou as multi_label_miou
from resi_core.model import RESIModel, load_checkpoint
from resi_core.model.config import known_fields
from resi_core.postprocess import (
    RawSegment,
    instance_list,
    overlapping_instances,
    semantic_inference,
    standard_panoptic_union,
)
from resi_core.predictor import Predictor, SpacesRequest
from resi_core.world import BENCHMARK_SYNONYMS, BENCHMARKS, DATASETS, benchmark_mix, generate
from resi_core.world.export import prepare_out_dir, write_world
from train.pretrain import (
    TrainConfig,
    checkpoint_step,
    domain_head_fitted,
    latest_checkpoint,
    train,
    with_method,
)

METRICS = ("miou", "pq", "ap", "piq")
TOPK = 100  # instances per decoder pass for AP, as in the Predictor
SEMANTIC_THRESHOLD = 0.5  # semantic inference: a pixel's best class must score this, as in the Predictor
BENCH_STAMP = "bench.json"  # in each run folder: the budget, data and config it was trained with
# Rows of the table: (row name, trained method, inference).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("Merged-M2F", "merged_m2f", "best_rule"),
    ("Text-M2F", "text_m2f", "best_rule"),
    ("RESI w/o ESF-OMI", "resi", "best_rule"),
    ("RESI (linear head)", "resi_linear", "esf_omi"),
    # Ablation: Text-M2F's weights (one shared query set) under RESI's inference, so the LSQEs' share of
    # RESI's lead is apart from the per-space classification and ESF-OMI's.
    ("RESI w/o LSQE", "text_m2f", "esf_omi"),
    ("RESI", "resi", "esf_omi"),
)


@dataclass(frozen=True)
class BenchConfig:
    train: dict[str, Any]  # a pretrain config (configs/world_demo.json's shape) without datasets
    iterations: int = 3000
    train_images: int = 2000  # per source dataset
    val_images: int = 100  # per benchmark
    seed: int = 0
    benchmarks: tuple[str, ...] = tuple(BENCHMARKS)
    score_threshold: float = 0.5
    # Domain-aware OMI (docs/MODEL.md): query sets (or, for the baselines, classes) of a domain that is
    # not the image's likeliest must score above this; None = off. Runs without a head get one fitted
    # after training on `domain_head_images` images per dataset (0 = fit none; heads already in a run
    # are still used, so turn the rule off with out_of_domain_threshold: null).
    out_of_domain_threshold: float | None = 0.98
    domain_head_images: int = 1000

    @staticmethod
    def from_json(data: dict[str, Any]) -> BenchConfig:
        known = known_fields(BenchConfig, data, "bench config", ignored=frozenset({"comment"}))
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in known.items()}
        bad = [b for b in values.get("benchmarks", ()) if b not in BENCHMARKS]
        if bad:
            raise ValueError(f"Unknown benchmarks {bad}; known: {list(BENCHMARKS)}.")
        return BenchConfig(**values)


# ----- data ------------------------------------------------------------------------------------------


def ensure_world(name: str, split: str, n: int, seed: int, out: Path) -> Path:
    """Write dataset or benchmark `name` to `out` unless an identical copy is already there."""
    instances = out / "instances.json"
    if instances.exists():
        info = json.loads(instances.read_text(encoding="utf-8")).get("info", {})
        if info.get("world", {}).get("n", info.get("n")) == n and _info_seed(info) == seed:
            return out
    out.mkdir(parents=True, exist_ok=True)
    prepare_out_dir(out, overwrite=True)
    write_world(generate(name, split, n, seed), name, out, split=split, seed=seed)
    return out


def _info_seed(info: dict) -> int | None:
    world = info.get("world", {})
    return world.get("seed", info.get("seed"))


# ----- inference rules -----------------------------------------------------------------------------


def _mixed_columns(model: RESIModel, space: str, mixed: MixedLabelSpace) -> list[int]:
    """For each class of a trained space, its column in the mixed label space."""
    return [mixed.class_of(space, c.name) for c in model.label_spaces[space].classes]


def _union_column_groups(model: RESIModel, mixed: MixedLabelSpace) -> list[list[int]]:
    """For each mixed class, the model's union columns of all its source names (shared-query baselines).

    A declared synonym pair (person ≡ pedestrian) is one mixed class with two columns.
    """
    index = {normalize_name(n): i for i, n in enumerate(model.union_names)}
    groups = []
    for c in mixed.classes:
        cols = sorted({index[normalize_name(n)] for _, n in c.sources if normalize_name(n) in index})
        if not cols:
            raise ValueError(f"The model was not trained on class {c.name!r}.")
        groups.append(cols)
    return groups


@torch.inference_mode()
def rule_inputs(
    model: RESIModel, image: np.ndarray, spaces: Sequence[str], mixed: MixedLabelSpace
) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], tuple[float, float], str | None]:
    """Mask logits and class probabilities over the mixed classes of every query that runs.

    Shared-query models run one pass classified over all mixed classes. Per-space models
    run one pass per space, each classified over its own classes, scattered into the mixed
    columns. Returns mask_logits [N, h, w], class_probs [N, M + 1], the image size, the
    valid extent of the padded logit grid, and the involved space whose domain the model's
    domain head finds likeliest (None without a head).
    """
    from resi_core.image_io import resize_for_model, to_pixel_values

    resized, info = resize_for_model(image, model.config.max_size, 32)
    features = model.encode(to_pixel_values(resized, info.padded_hw))
    m = len(mixed.classes)
    if model.config.query_mode == "shared":
        out = model.decode(features, [spaces[0]])
        logits = model.union_logits(out.hidden_states[-1][0])  # [Q, U + 1]
        groups = _union_column_groups(model, mixed)
        # Softmax over the asked classes + ∅ only, then synonym columns add up into their mixed class.
        asked = sorted({c for g in groups for c in g}) + [logits.shape[-1] - 1]
        position = {c: i for i, c in enumerate(asked)}
        p = logits[:, asked].float().softmax(-1)  # [Q, |asked|]
        probs = torch.stack([p[:, [position[c] for c in g]].sum(-1) for g in groups] + [p[:, -1]], -1)  # [Q, M+1]
        masks = out.masks_queries_logits[-1][0]  # [Q, h, w]
    else:
        out = model.decode(features, list(spaces))
        all_probs = []
        for i, space in enumerate(spaces):
            own = model.space_logits(out.hidden_states[-1][i], space).float().softmax(-1)  # [Q, K + 1]
            scattered = torch.zeros(own.shape[0], m + 1)  # [Q, M + 1]
            scattered[:, _mixed_columns(model, space, mixed) + [m]] = own
            all_probs.append(scattered)
        probs = torch.cat(all_probs)  # [k*Q, M + 1]
        masks = out.masks_queries_logits[-1].flatten(0, 1)  # [k*Q, h, w]
    extent = info.valid_extent(tuple(masks.shape[-2:]))
    likeliest = None
    known = [s for s in spaces if s in model.domain_spaces]
    if model.domain_head is not None and len(known) > 1:
        likeliest = max(known, key=model.image_domain_probs(features, info.valid_fraction).__getitem__)
    return masks, probs, info.original_hw, extent, likeliest


def domain_aware(probs: torch.Tensor, mixed: MixedLabelSpace, likeliest: str, threshold: float) -> torch.Tensor:
    """The baselines' domain-aware variant (fair to domain-aware OMI): a query whose best class comes
    from no label space of the image's likeliest domain must score above `threshold`, else it is ∅."""
    m = len(mixed.classes)
    scores, labels = probs.max(-1)  # [N], [N]
    in_domain = torch.tensor([any(space == likeliest for space, _ in c.sources) for c in mixed.classes] + [True],
                             device=probs.device)
    weak = ~in_domain[labels] & (scores <= threshold)  # [N]
    gated = probs.clone()
    gated[weak] = 0.0
    gated[weak, m] = 1.0
    return gated


def _raw_to_predictions(
    raw: Sequence[RawSegment], image_id: int, mixed: MixedLabelSpace, category_ids: dict[str, int]
) -> list[Prediction]:
    return [
        Prediction(image_id, category_ids[mixed.classes[r.label].name], encode_mask(r.mask), r.score)
        for r in raw
        if r.mask.any()
    ]


# ----- evaluation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    miou: float
    pq: float
    ap: float
    piq: float
    rule: dict[str, str]  # metric -> inference rule that gave it

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _scores(
    gt: GroundTruth, segments: list[Prediction], instances_ap: APResult | None, rule: str,
    semantic: list[Prediction] | None = None,
) -> Scores:
    """Scores of one rule: PQ and PIQ of `segments`, mIoU of `semantic` (default `segments`) and
    the AP already computed on the rule's instance list (`mask_ap`; None when it has no thing class)."""
    result = evaluate(gt, segments, with_ap=False)
    miou = multi_label_miou(gt, semantic) if semantic is not None else result.miou
    return Scores(
        miou=miou.miou,
        pq=result.pq.pq_mean,
        ap=instances_ap.ap if instances_ap is not None else float("nan"),
        piq=result.piq.piq,
        rule={**dict.fromkeys(METRICS, rule), **({"miou": f"{rule}_semantic"} if semantic is not None else {})},
    )


def _best(a: Scores, b: Scores) -> Scores:
    values, rules = {}, {}
    for metric in METRICS:
        x, y = getattr(a, metric), getattr(b, metric)
        pick = a if (np.isnan(y) or x >= y) else b
        values[metric], rules[metric] = getattr(pick, metric), pick.rule[metric]
    return Scores(**values, rule=rules)


def evaluate_benchmark(
    model: RESIModel, inference: str, benchmark: str, data_dir: Path, score_threshold: float,
    progress: Callable[[], None] | None = None, out_of_domain_threshold: float | None = None,
) -> Scores:
    gt = load_ground_truth(data_dir / "instances.json")
    mixed = benchmark_mix(benchmark)
    spaces = BENCHMARKS[benchmark]
    category_ids = {c.name: c.id for c in gt.categories.values()}
    missing = [c.name for c in mixed.classes if c.name not in category_ids]
    if missing:
        raise ValueError(f"{data_dir} lacks categories {missing} of {benchmark}; regenerate it.")
    if inference == "esf_omi":
        predictor = Predictor(model, None, score_threshold=score_threshold, cache_size=1,
                              out_of_domain_threshold=out_of_domain_threshold)
        request = SpacesRequest(tuple(spaces), BENCHMARK_SYNONYMS.get(benchmark, ()))
        segments, instances, semantic = [], [], []
        for image in gt.images.values():
            pred = predictor.predict(decode_image(data_dir / "images" / image.file_name), request, with_semantic=True)
            for out, found in ((segments, pred.segments), (instances, pred.instances), (semantic, pred.semantic)):
                out += [Prediction(image.id, category_ids[s.class_name], s.to_rle(), s.score) for s in found]
            if progress:
                progress()
        return _scores(gt, segments, mask_ap(gt, instances), "esf_omi", semantic)
    # Rules: panoptic union, overlapping and semantic union, each as is and (with a domain head)
    # domain-aware.
    union: dict[str, list[Prediction]] = {"": []}
    overlap: dict[str, list[Prediction]] = {"": []}
    semantic: dict[str, list[Prediction]] = {"": []}
    instances: list[Prediction] = []
    isthing = [c.isthing for c in mixed.classes]
    for image in gt.images.values():
        masks, probs, hw, extent, likeliest = rule_inputs(
            model, decode_image(data_dir / "images" / image.file_name), spaces, mixed
        )
        variants = {"": probs}
        if likeliest is not None and out_of_domain_threshold is not None:
            variants["domain_aware_"] = domain_aware(probs, mixed, likeliest, out_of_domain_threshold)
        for name, p in variants.items():
            union.setdefault(name, []).extend(_raw_to_predictions(
                standard_panoptic_union(masks, p, isthing, hw, extent, score_threshold), image.id, mixed, category_ids
            ))
            overlap.setdefault(name, []).extend(_raw_to_predictions(
                overlapping_instances(masks, p, hw, extent, score_threshold), image.id, mixed, category_ids
            ))
            semantic.setdefault(name, []).extend(_raw_to_predictions(
                semantic_inference(masks, p, hw, extent, SEMANTIC_THRESHOLD), image.id, mixed, category_ids
            ))
        # AP is scored on the same kind of top-k instance list that RESI's predictor gives, for every rule.
        per_pass = masks.shape[0] // (1 if model.config.query_mode == "shared" else len(spaces))
        for start in range(0, masks.shape[0], per_pass):  # top-k per decoder pass, as the Predictor does
            rows = slice(start, start + per_pass)
            instances += _raw_to_predictions(
                instance_list(masks[rows], probs[rows], hw, extent, TOPK, isthing), image.id, mixed, category_ids
            )
        if progress:
            progress()
    instances_ap = mask_ap(gt, instances)  # one list for every rule: score it once
    best = None
    for name in union:
        rules = (
            (f"{name}panoptic_union", union[name]),
            (f"{name}overlapping", overlap[name]),
            (f"{name}semantic_union", semantic[name]),
        )
        for rule, predictions in rules:
            scores = _scores(gt, predictions, instances_ap, rule)
            best = scores if best is None else _best(best, scores)
    return best


# ----- the table -------------------------------------------------------------------------------------------


def markdown_table(results: dict[str, dict[str, Scores]], benchmarks: Sequence[str]) -> str:
    """results[row][benchmark] -> one row per method, columns benchmark × metric, then the mean."""
    head = ["method"] + [f"{b} {m}" for b in (*benchmarks, "mean") for m in ("mIoU", "PQ", "AP", "PIQ")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, per_bench in results.items():
        cells = [row]
        for b in benchmarks:
            cells += [f"{100 * getattr(per_bench[b], m):.1f}" for m in METRICS]
        cells += [f"{100 * mean_metric(per_bench, benchmarks, m):.1f}" for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_metric(per_bench: dict[str, Scores], benchmarks: Sequence[str], metric: str) -> float:
    return float(np.nanmean([getattr(per_bench[b], metric) for b in benchmarks]))


def margins(results: dict[str, dict[str, Scores]], benchmarks: Sequence[str]) -> dict[str, float]:
    """RESI minus the best baseline (Merged-M2F, Text-M2F), averaged over benchmarks, in points."""
    out = {}
    for m in METRICS:
        resi = mean_metric(results["RESI"], benchmarks, m)
        best = max(mean_metric(results[r], benchmarks, m) for r in ("Merged-M2F", "Text-M2F") if r in results)
        out[m] = 100 * (resi - best)
    return out


# ----- command line ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train bench",
        description="Train Merged-M2F, Text-M2F, RESI and RESI with a linear head on the four generated "
        "source datasets with one budget and seed, evaluate them (and RESI without ESF-OMI) on the mixed "
        "benchmarks M1-M4, and write the table as Markdown and JSON.",
    )
    parser.add_argument("--config", default="configs/bench.json", help="bench config JSON (default: %(default)s)")
    parser.add_argument("--smoke", action="store_true", help="use configs/bench_smoke.json: a minutes-long run")
    parser.add_argument("--out", default="resi-data/bench", help="work folder: data, runs, results (default: %(default)s)")
    parser.add_argument("--iterations", type=int, help="override the training budget per method")
    parser.add_argument("--methods", nargs="+", help="only these table rows' methods (e.g. resi text_m2f)")
    parser.add_argument("--retrain", action="store_true", help="train again even if a finished run exists")
    parser.add_argument("--jobs", type=int, default=2,
                        help="methods trained at once, each in its own process with a share of the CPU threads; "
                        "on a 2-core CPU two 1-thread runs get ~1.5x the throughput of one 2-thread run "
                        "(default: %(default)s)")
    parser.add_argument("--val-seed", type=int,
                        help="evaluate on validation images generated with this seed instead of the config's "
                        "(a check of the same trained runs on another sample; writes results-val-seed<N>.*)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def val_folder(val_seed: int | None) -> str:
    """A benchmark's validation folder: `val` for the training seed's images, `val-seed<N>` for another seed's."""
    return "val" if val_seed is None else f"val-seed{val_seed}"


def run(
    config: BenchConfig, out: Path, methods: Sequence[str] | None, retrain: bool, progress: bool, jobs: int = 1,
    val_seed: int | None = None,
) -> dict:
    """Train what is missing, then evaluate. `val_seed`: evaluate on validation images of this seed instead
    of the training seed's (the same trained runs on another sample of images)."""
    from tqdm import tqdm

    start = time.perf_counter()
    data_root = out / "data"
    for name in DATASETS:
        ensure_world(name, "train", config.train_images, config.seed, data_root / name / "train")
    val, val_images_seed = val_folder(val_seed), config.seed if val_seed is None else val_seed
    for bench in config.benchmarks:
        ensure_world(bench, "val", config.val_images, val_images_seed, data_root / bench / val)
    data_seconds = time.perf_counter() - start

    rows = [r for r in ROWS if methods is None or r[1] in methods]
    todo: list[tuple[str, TrainConfig]] = []
    for method in dict.fromkeys(r[1] for r in rows):
        run_dir = out / "runs" / method
        base = dict(config.train)
        base.update(
            datasets=[
                {"name": d, "images": f"{d}/train/images", "instances": f"{d}/train/instances.json"} for d in DATASETS
            ],
            data_root=str(data_root),
            out=str(run_dir),
            method=method,
            iterations=config.iterations,
            seed=config.seed,
            domain_head_images=config.domain_head_images,
        )
        if jobs > 1:
            base["threads"] = max(1, torch.get_num_threads() // jobs)
        # A finished run is reused only if it was trained on exactly this budget, data and config.
        fingerprint = {"train": config.train, "train_images": config.train_images, "seed": config.seed,
                       "iterations": config.iterations, "method": method}
        finished = latest_checkpoint(run_dir)
        stamp = run_dir / BENCH_STAMP
        same = stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == fingerprint
        # A finished run without a domain head goes through train() too, which only fits the head.
        headless = finished is not None and config.domain_head_images > 0 and not domain_head_fitted(finished)
        if retrain or not same or finished is None or checkpoint_step(finished) != config.iterations or headless:
            if run_dir.exists() and (retrain or not same):
                shutil.rmtree(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            stamp.write_text(json.dumps(fingerprint), encoding="utf-8")
            todo.append((method, with_method(TrainConfig.from_json(base))))
    tick = time.perf_counter()
    if todo:
        print(f"== training {', '.join(m for m, _ in todo)} for {config.iterations} iterations each "
              f"({min(jobs, len(todo))} at a time)", flush=True)
    if jobs > 1 and len(todo) > 1:
        import multiprocessing

        # A Pool, not a ProcessPoolExecutor: on Ctrl-C, SIGTERM or a failed run, terminate() stops the
        # other trainings too instead of waiting for them (or leaving them running on their own).
        pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(todo)))
        try:
            runs = [pool.apply_async(train, (c, True, progress, i % jobs)) for i, (_, c) in enumerate(todo)]
            for run_ in runs:
                run_.get()
            pool.close()
        finally:
            pool.terminate()
            pool.join()
    else:
        for _, train_config in todo:
            train(train_config, resume=True, progress=progress)  # stale runs were removed above
    train_seconds = time.perf_counter() - tick
    trained = {m: load_checkpoint(latest_checkpoint(out / "runs" / m)).eval() for m in dict.fromkeys(r[1] for r in rows)}

    results: dict[str, dict[str, Scores]] = {}
    total = len(rows) * config.val_images * len(config.benchmarks)
    bar = tqdm(total=total, desc="evaluate", unit="img", disable=not progress)
    tick = time.perf_counter()
    for row, method, inference in rows:
        results[row] = {}
        for bench in config.benchmarks:
            bar.set_postfix_str(f"{row} {bench}")
            results[row][bench] = evaluate_benchmark(
                trained[method], inference, bench, data_root / bench / val, config.score_threshold,
                progress=lambda: bar.update(1), out_of_domain_threshold=config.out_of_domain_threshold,
            )
    bar.close()
    eval_seconds = time.perf_counter() - tick
    report = {
        "config": dataclasses.asdict(config),
        "val_seed": val_images_seed,
        "machine": machine_description(),
        "device": "cuda" if torch.cuda.is_available() and config.train.get("device", "auto") != "cpu" else "cpu",
        "seconds": {"data": data_seconds, "train": train_seconds, "evaluate": eval_seconds,
                    "total": time.perf_counter() - start},
        "results": {row: {b: s.to_json() for b, s in per.items()} for row, per in results.items()},
    }
    if "RESI" in results and any(r in results for r in ("Merged-M2F", "Text-M2F")):
        report["resi_margin_points"] = margins(results, config.benchmarks)
    report["markdown"] = markdown_table(results, config.benchmarks)
    return report


def machine_description() -> str:
    """CPU model, core count and GPU (if any), for the report."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}"


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through run(), which stops the trainings it started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
    config_path = Path("configs/bench_smoke.json" if args.smoke else args.config)
    try:
        config = BenchConfig.from_json(json.loads(config_path.read_text(encoding="utf-8")))
        if args.iterations:
            config = dataclasses.replace(config, iterations=args.iterations)
        out = Path(args.out)
        if args.val_seed is not None and args.val_seed == config.seed:
            raise ValueError(f"--val-seed {args.val_seed} is the training seed; the table already uses its images.")
        report = run(config, out, args.methods, args.retrain, progress=not args.no_progress, jobs=max(1, args.jobs),
                     val_seed=args.val_seed)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    stem = "results" if args.val_seed is None else f"results-val-seed{args.val_seed}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / f"{stem}.md").write_text(report["markdown"] + "\n", encoding="utf-8")
    print(report["markdown"])
    if "resi_margin_points" in report:
        print("RESI minus best baseline, mean over benchmarks (points):",
              ", ".join(f"{k} {v:+.1f}" for k, v in report["resi_margin_points"].items()))
    print(f"total {report['seconds']['total']:.0f} s; results in {out}/{stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
