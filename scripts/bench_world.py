"""Measure the world generator's speed: images/s for rendering + annotation, and with COCO export.

Usage: .venv/bin/python scripts/bench_world.py [--n 400] [--size 128]
Single process, so the figures are per core.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from resi_core.world import BENCHMARKS, DATASETS, generate, make_sample, prepare_out_dir, write_world  # noqa: E402
from resi_core.world.export import overlay  # noqa: E402

# (dataset or benchmark, image index) shown in docs/WORLD.md
SAMPLES = (("street", 1), ("portrait", 0), ("drive", 2), ("parts", 4), ("avenue", 1), ("M1", 1), ("M3", 1),
           ("M5", 24))


def write_samples(out_dir: Path, size: int) -> None:
    """One PNG per entry of SAMPLES: the image, then one overlay per label space, 3x upscaled."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, index in SAMPLES:
        sample = make_sample(name, "val", index, seed=0, size=size)
        panels = [sample.image] + [overlay(sample.image, segs) for segs in sample.segments.values()]
        strip = np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], axis=1)
        Image.fromarray(strip).resize((strip.shape[1] * 3, strip.shape[0] * 3), Image.NEAREST).save(
            out_dir / f"{name}.png")


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:7.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="images per dataset or benchmark")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=Path, help="also write the docs' overlay PNGs to this folder")
    args = parser.parse_args(argv)
    if args.samples:
        write_samples(args.samples, args.size)
    print(f"images/s at {args.size}x{args.size}, n={args.n} (wall clock; CPU time in brackets)")
    print(f"{'name':<9} {'render+annotate':>17} {'+ export':>19}")
    totals = [0.0, 0.0, 0.0, 0.0]
    for name in DATASETS + tuple(BENCHMARKS):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in generate(name, "train", args.n, 0, args.size):
            pass
        gen = (time.perf_counter() - wall, time.process_time() - cpu)
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = time.perf_counter(), time.process_time()
            prepare_out_dir(Path(tmp), overwrite=False)
            write_world(generate(name, "train", args.n, 0, args.size), name, Path(tmp), split="train", seed=0)
            exp = (time.perf_counter() - wall, time.process_time() - cpu)
        for k, v in enumerate(gen + exp):
            totals[k] += v
        print(f"{name:<9} {rate(args.n, gen[0])} [{rate(args.n, gen[1])}] {rate(args.n, exp[0])} [{rate(args.n, exp[1])}]")
    count = args.n * (len(DATASETS) + len(BENCHMARKS))
    print(f"{'all':<9} {rate(count, totals[0])} [{rate(count, totals[1])}] "
          f"{rate(count, totals[2])} [{rate(count, totals[3])}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
