"""Choose each method's score threshold on held-out images, then score the bench table with them.

    python scripts/calibrate_thresholds.py --bench resi-data/bench --out resi-data/calibrated-thresholds.md

(The study of 2026-12-02, not adopted, and its tables: docs/bench/TRIED.md, "Score thresholds chosen
per method".)

The bench (`python -m train bench`) gives every method one score threshold (0.5). A method whose
scores run higher (RESI's per-space softmax over a few classes) or lower (a shared query set's softmax
over the union) may be better served by another. This study gives every table row the same
treatment: for each row, every threshold of the grid is scored on the M1-M4 validation images of
another seed (`--calibration-seed`, default 1: images the table never sees), the threshold with the
best mean PIQ is kept, and the table's images (the bench's own validation sets) are scored with it.
Everything else is the bench's evaluation (`train.bench.evaluate_benchmark`), so baselines keep
their best-of-rules treatment. The trained runs are read from `--bench`; nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resi_core.model import load_checkpoint  # noqa: E402
from train.bench import (  # noqa: E402
    METRICS,
    ROWS,
    BenchConfig,
    Scores,
    ensure_world,
    evaluate_benchmark,
    margins,
    markdown_table,
)
from train.pretrain import latest_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=Path("resi-data/bench"), help="a finished bench folder")
    parser.add_argument("--config", type=Path, default=Path("configs/bench.json"))
    parser.add_argument("--grid", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--calibration-seed", type=int, default=1)
    parser.add_argument("--calibration-images", type=int, default=50, help="per benchmark")
    parser.add_argument("--out", type=Path, required=True, help="Markdown report; JSON beside it")
    args = parser.parse_args(argv)
    config = BenchConfig.from_json(json.loads(args.config.read_text(encoding="utf-8")))
    if args.calibration_seed == config.seed:
        print("error: calibrate on another seed than the table's.", file=sys.stderr)
        return 2
    start = time.perf_counter()
    models = {}
    for _, method, _ in ROWS:
        checkpoint = latest_checkpoint(args.bench / "runs" / method)
        if checkpoint is None:
            print(f"error: {args.bench}/runs/{method} has no finished run; run the bench first.", file=sys.stderr)
            return 2
        models[method] = load_checkpoint(checkpoint).eval()
    held_out = args.bench / f"calibration-seed{args.calibration_seed}"
    for bench in config.benchmarks:
        ensure_world(bench, "val", args.calibration_images, args.calibration_seed, held_out / bench / "val")

    def score(row_method: str, inference: str, root: Path, threshold: float, bar: tqdm) -> dict:
        return {b: evaluate_benchmark(models[row_method], inference, b, root / b / "val", threshold,
                                      progress=lambda: bar.update(1),
                                      out_of_domain_threshold=config.out_of_domain_threshold)
                for b in config.benchmarks}

    sweep: dict[str, dict[float, dict[str, float]]] = {}
    chosen: dict[str, float] = {}
    bar = tqdm(total=len(ROWS) * len(args.grid) * args.calibration_images * len(config.benchmarks),
               desc="calibrate", unit="img")
    for row, method, inference in ROWS:
        sweep[row] = {}
        for t in args.grid:
            bar.set_postfix_str(f"{row} {t}")
            per = score(method, inference, held_out, t, bar)
            sweep[row][t] = {m: 100 * float(np.nanmean([getattr(s, m) for s in per.values()])) for m in METRICS}
        chosen[row] = max(args.grid, key=lambda t, r=row: sweep[r][t]["piq"])
    bar.close()
    # Rows whose chosen threshold is the bench's own are read from the bench's results.json.
    bench_results = json.loads((args.bench / "results.json").read_text(encoding="utf-8"))
    same_run = (bench_results["config"]["val_images"] == config.val_images
                and bench_results["config"]["score_threshold"] == config.score_threshold)
    table: dict = {}
    again = [r for r in ROWS if not (same_run and chosen[r[0]] == config.score_threshold)]
    bar = tqdm(total=len(again) * config.val_images * len(config.benchmarks), desc="table", unit="img")
    for row, method, inference in ROWS:
        if (row, method, inference) in again:
            table[row] = score(method, inference, args.bench / "data", chosen[row], bar)
        else:
            table[row] = {b: Scores(**s) for b, s in bench_results["results"][row].items()}
    bar.close()
    gaps = margins(table, config.benchmarks)
    lines = [
        f"# Score thresholds chosen per method on held-out images (seed {args.calibration_seed})", "",
        "`python scripts/calibrate_thresholds.py` (docstring: the protocol). Calibration: "
        f"{args.calibration_images} images per benchmark of seed {args.calibration_seed}; table: the bench's "
        f"{config.val_images} images per benchmark of seed {config.seed}. Time: {time.perf_counter() - start:.0f} s.",
        "", "Mean over M1-M4 on the calibration images, per threshold (mIoU / PQ / AP / PIQ):", "",
        "| method | " + " | ".join(f"{t:g}" for t in args.grid) + " | chosen |",
        "|---|" + "---|" * (len(args.grid) + 1),
    ]
    for row in sweep:
        cells = [" / ".join(f"{sweep[row][t][m]:.1f}" for m in METRICS) for t in args.grid]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {chosen[row]:g} |")
    lines += ["", "The table's images, each method at its chosen threshold:", "", markdown_table(table, config.benchmarks),
              "", "RESI minus the best baseline, mean over benchmarks: "
              + ", ".join(f"{k} {v:+.1f}" for k, v in gaps.items())]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps({
        "grid": args.grid, "chosen": chosen,
        "sweep": {r: {str(t): v for t, v in per.items()} for r, per in sweep.items()},
        "results": {r: {b: s.to_json() for b, s in per.items()} for r, per in table.items()},
        "resi_margin_points": gaps,
    }, indent=2), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
