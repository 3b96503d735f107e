"""`python -m train bench --config CONFIG`: RESI against the baselines on the mixed benchmarks M1-M5.

Every method is trained on the same generated source datasets with the same budget and seed
(SPEC §6), then evaluated on each mixed benchmark with mIoU, PQ, AP, PIQ and overlap recall
(OR: of the ground-truth pairs of masks of two label spaces on the same pixels, the share where
both are found, SPEC §5), through the
Predictor's own stages (`Predictor.decode`, then ESF-OMI or the baselines' rules):
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
The table is written as Markdown and JSON, with RESI's margins under two headings (SPEC §6): against the
prior-method baseline (Merged-M2F) and against the ablations (Text-M2F = RESI without LSQE, RESI without
ESF-OMI, the linear head, RESI without LSQE under ESF-OMI). The JSON also holds each row's per-class PIQ
and per-space PQ on every benchmark.

Same-named classes of a distinct label space (M5: street's and avenue's car) are two classes everywhere:
ground truth, ESF, metrics. A model with one column per class name (Merged-M2F, Text-M2F, as SPEC §6
defines them: a classifier over the union of class names) has one "car" column; under the union rules its
"car" answers for both spaces' cars, which is all a prior method of that kind can say.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from resi_core.labels import MixedLabelSpace
from resi_core.metrics import APResult, evaluate, mask_ap
from resi_core.metrics import miou as multi_label_miou
from resi_core.model import RESIModel, load_checkpoint
from resi_core.model.config import known_fields
from resi_core.postprocess import (
    RawSegment,
    hold_out_of_domain,
    instance_list,
    overlapping_instances,
    semantic_inference,
    standard_panoptic_union,
)
from resi_core.predictor import Predictor, SpacesRequest
from resi_core.world import (
    BENCHMARK_DISTINCT,
    BENCHMARK_SYNONYMS,
    BENCHMARKS,
    DATASETS,
    benchmark_mix,
    generate,
)
from resi_core.world.export import prepare_out_dir, write_world
from train.pretrain import (
    TrainConfig,
    checkpoint_step,
    domain_head_fitted,
    latest_checkpoint,
    train,
    with_method,
)

METRICS = ("miou", "pq", "ap", "piq", "overlap")  # overlap: overlap recall (SPEC §5)
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


def benchmark_request(benchmark: str) -> SpacesRequest:
    """What a user asks for on benchmark `benchmark`: its label spaces, declared synonyms and distinct spaces."""
    return SpacesRequest(tuple(BENCHMARKS[benchmark]), BENCHMARK_SYNONYMS.get(benchmark, ()),
                         BENCHMARK_DISTINCT.get(benchmark, ()))


def _raw_to_predictions(
    raw: Sequence[RawSegment], image_id: int, mixed: MixedLabelSpace, classes: Sequence[Sequence[int]],
    category_ids: dict[str, int],
) -> list[Prediction]:
    """Rule segments (labels index `classes`, each standing for one or more mixed classes) -> predictions,
    one per mixed class: a union column that serves "car (street)" and "car (avenue)" answers both."""
    return [
        Prediction(image_id, category_ids[mixed.classes[c].name], encode_mask(r.mask), r.score)
        for r in raw
        if r.mask.any()
        for c in classes[r.label]
    ]


# ----- evaluation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    miou: float
    pq: float
    ap: float
    piq: float
    overlap: float  # overlap recall; NaN when the ground truth has no overlapping pair
    rule: dict[str, str]  # metric -> inference rule that gave it
    # Of the rule that gave PIQ: class -> {piq, sq, rq, tp, fp, fn, isthing}; of the rule that gave PQ:
    # label space -> its PQ.
    piq_per_class: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    pq_per_space: dict[str, float] = dataclasses.field(default_factory=dict)

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
        overlap=float("nan") if result.overlap.recall is None else result.overlap.recall,
        rule={**dict.fromkeys(METRICS, rule), **({"miou": f"{rule}_semantic"} if semantic is not None else {})},
        piq_per_class={name: dataclasses.asdict(c) for name, c in result.piq.per_class.items()},
        pq_per_space={space: r.piq for space, r in result.pq.per_space.items()},
    )


def _best(a: Scores, b: Scores) -> Scores:
    """Each metric from the rule that scores it higher (its per-class or per-space detail goes with it)."""
    values, rules = {}, {}
    for metric in METRICS:
        x, y = getattr(a, metric), getattr(b, metric)
        pick = a if (np.isnan(y) or x >= y) else b
        values[metric], rules[metric] = getattr(pick, metric), pick.rule[metric]
    piq_from = a if rules["piq"] == a.rule["piq"] else b
    pq_from = a if rules["pq"] == a.rule["pq"] else b
    return Scores(**values, rule=rules, piq_per_class=piq_from.piq_per_class, pq_per_space=pq_from.pq_per_space)


def evaluate_benchmark(
    model: RESIModel, inference: str, benchmark: str, data_dir: Path, score_threshold: float,
    progress: Callable[[], None] | None = None, out_of_domain_threshold: float | None = None,
) -> Scores:
    """Scores of `model` on benchmark `benchmark`'s images in `data_dir`, through the Predictor's stages.

    inference "esf_omi": `Predictor.predict` (ESF-OMI segments for PQ and PIQ, the per-pass instance
    lists for AP, the per-pass semantic maps for mIoU). "best_rule": `Predictor.decode` (one union pass for
    a shared-query model, one pass per label space otherwise), then the baselines' rules on all its
    queries (`Decoded.joint`): panoptic union, overlapping and semantic union, each as is and, where the
    asked spaces span two or more domains, domain-aware (`hold_out_of_domain`); each metric its best.
    """
    gt = load_ground_truth(data_dir / "instances.json")
    mixed = benchmark_mix(benchmark)
    category_ids = {c.name: c.id for c in gt.categories.values()}
    missing = [c.name for c in mixed.classes if c.name not in category_ids]
    if missing:
        raise ValueError(f"{data_dir} lacks categories {missing} of {benchmark}; regenerate it.")
    predictor = Predictor(model, None, score_threshold=score_threshold, cache_size=1,
                          out_of_domain_threshold=out_of_domain_threshold)
    request = benchmark_request(benchmark)
    if inference == "esf_omi":
        segments, instances, semantic = [], [], []
        for image in gt.images.values():
            pred = predictor.predict(decode_image(data_dir / "images" / image.file_name), request, with_semantic=True)
            for out, found in ((segments, pred.segments), (instances, pred.instances), (semantic, pred.semantic)):
                out += [Prediction(image.id, category_ids[s.class_name], s.to_rle(), s.score) for s in found]
            if progress:
                progress()
        return _scores(gt, segments, mask_ap(gt, instances), "esf_omi", semantic)
    union: dict[str, list[Prediction]] = {"": []}
    overlap: dict[str, list[Prediction]] = {"": []}
    semantic: dict[str, list[Prediction]] = {"": []}
    instances: list[Prediction] = []
    shared = model.config.query_mode == "shared"
    for image in gt.images.values():
        decoded = predictor.decode(decode_image(data_dir / "images" / image.file_name), request, union=shared)
        joint = decoded.joint()
        hw, extent, isthing = decoded.image_hw, decoded.extent, list(joint.isthing)
        predictions = functools.partial(_raw_to_predictions, image_id=image.id, mixed=mixed, classes=joint.classes,
                                        category_ids=category_ids)

        variants = {"": joint.probs}
        if joint.in_domain is not None and out_of_domain_threshold is not None:
            variants["domain_aware_"] = hold_out_of_domain(joint.probs, joint.in_domain, out_of_domain_threshold)
        for name, p in variants.items():
            union.setdefault(name, []).extend(predictions(standard_panoptic_union(
                joint.mask_logits, p, isthing, hw, extent, predictor.score_threshold, predictor.overlap_threshold)))
            overlap.setdefault(name, []).extend(predictions(overlapping_instances(
                joint.mask_logits, p, hw, extent, predictor.score_threshold)))
            semantic.setdefault(name, []).extend(predictions(semantic_inference(
                joint.mask_logits, p, hw, extent, predictor.semantic_threshold)))
        # AP is scored on the same kind of top-k instance list that RESI's predictor gives, for every rule:
        # top-k per decoder pass.
        for rows in joint.pass_rows:
            instances += predictions(instance_list(
                joint.mask_logits[rows], joint.probs[rows], hw, extent, predictor.topk, isthing))
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
        for rule, predictions_ in rules:
            scores = _scores(gt, predictions_, instances_ap, rule)
            best = scores if best is None else _best(best, scores)
    return best


# ----- the table -------------------------------------------------------------------------------------------


METRIC_LABELS = {"miou": "mIoU", "pq": "PQ", "ap": "AP", "piq": "PIQ", "overlap": "OR"}
# SPEC §6's two headings: RESI against the prior method, and against its own ablations (Text-M2F is RESI
# without its query sets, so it is an ablation as much as a baseline).
PRIOR_METHODS: tuple[str, ...] = ("Merged-M2F",)
ABLATIONS: tuple[str, ...] = ("Text-M2F", "RESI w/o ESF-OMI", "RESI (linear head)", "RESI w/o LSQE")


def mean_columns(benchmarks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """The means the table reports: over every benchmark, and, when benchmarks with a distinct label space
    (M5) are among others, over the others alone ("mean M1–M4": the comparison as it was before M5)."""
    plain = tuple(b for b in benchmarks if not BENCHMARK_DISTINCT.get(b))
    out = {}
    if plain and len(plain) < len(benchmarks):
        out["mean M1–M4" if plain == ("M1", "M2", "M3", "M4") else "mean " + "+".join(plain)] = plain
    out["mean"] = tuple(benchmarks)
    return out


def _columns(benchmarks: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Every column group of a table: each benchmark alone, then the means."""
    return {**{b: (b,) for b in benchmarks}, **mean_columns(benchmarks)}


def markdown_table(results: dict[str, dict[str, Scores]], benchmarks: Sequence[str]) -> str:
    """results[row][benchmark] -> one row per method, columns benchmark × metric, then the means."""
    columns = _columns(benchmarks)
    head = ["method"] + [f"{c} {METRIC_LABELS[m]}" for c in columns for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, per_bench in results.items():
        cells = [row] + [f"{100 * mean_metric(per_bench, group, m):.1f}" for group in columns.values() for m in METRICS]
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


def margins_against(
    results: dict[str, dict[str, Scores]], benchmarks: Sequence[str], rows: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """RESI minus each of `rows` (those in the results), in points: row -> column (each benchmark and each
    mean of `mean_columns`) -> metric."""
    return {
        row: {name: {m: 100 * (mean_metric(results["RESI"], group, m) - mean_metric(results[row], group, m))
                     for m in METRICS} for name, group in _columns(benchmarks).items()}
        for row in rows if row in results
    }


def margins_markdown(margins_by_row: dict[str, dict[str, dict[str, float]]]) -> str:
    """A margins_against() result as a Markdown table of signed points."""
    if not margins_by_row:
        return ""
    columns = list(next(iter(margins_by_row.values())))
    head = ["RESI minus"] + [f"{c} {METRIC_LABELS[m]}" for c in columns for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, per_column in margins_by_row.items():
        lines.append("| " + " | ".join([row] + [f"{per_column[c][m]:+.1f}" for c in columns for m in METRICS]) + " |")
    return "\n".join(lines)


# ----- command line ------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train bench",
        description="Train Merged-M2F, Text-M2F, RESI and RESI with a linear head on the five generated "
        "source datasets with one budget and seed, evaluate them (and RESI without ESF-OMI) on the mixed "
        "benchmarks M1-M5, and write the table as Markdown and JSON. Resumable: finished trainings are "
        "reused, and an interrupted one continues from its last checkpoint.",
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

    start, cpu_start = time.perf_counter(), cpu_seconds()
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
                       "iterations": config.iterations, "method": method, "datasets": list(DATASETS)}
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
        # CPU time of this process and its finished training processes: on a machine shared with other
        # work, wall time says little, so this and the load average say what the run itself cost.
        "cpu_seconds": cpu_seconds() - cpu_start,
        "load_average": os.getloadavg(),
        "results": {row: {b: s.to_json() for b, s in per.items()} for row, per in results.items()},
    }
    markdown = [markdown_table(results, config.benchmarks)]
    if "RESI" in results and any(r in results for r in ("Merged-M2F", "Text-M2F")):
        report["resi_margin_points"] = margins(results, config.benchmarks)
    if "RESI" in results:
        report["margins"] = {"prior_method": margins_against(results, config.benchmarks, PRIOR_METHODS),
                             "ablations": margins_against(results, config.benchmarks, ABLATIONS)}
        for title, key in (("RESI minus the prior-method baseline (points)", "prior_method"),
                           ("RESI minus its ablations (points)", "ablations")):
            if report["margins"][key]:
                markdown += [f"{title}:", margins_markdown(report["margins"][key])]
    report["markdown"] = "\n\n".join(markdown)
    return report


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its children that have ended (the training pool)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


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
    load = ", ".join(f"{v:.1f}" for v in report["load_average"])
    print(f"total {report['seconds']['total']:.0f} s wall, {report['cpu_seconds']:.0f} s CPU (load average at the end "
          f"{load}); results in {out}/{stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
