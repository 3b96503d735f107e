"""`python -m train world`: write a source dataset or a mixed benchmark of the generated world."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from resi_core.labels import LabelError
from resi_core.world import BENCHMARKS, DATASETS, SPLITS, ExportError, generate, prepare_out_dir, write_world
from resi_core.world.spaces import BENCHMARK_DISTINCT, BENCHMARK_SYNONYMS, SCENES, source_spaces


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line instead of usage + traceback-free exit
        raise _UsageError(message)


def _epilog() -> str:
    spaces = source_spaces()
    lines = ["source datasets (label space = dataset name):"]
    for name in DATASETS:
        classes = ", ".join(f"{c.name}{'' if c.isthing else ' (stuff)'}" for c in spaces[name].classes)
        scenes = f"  ({SCENES[name]}'s scenes, another annotation guide)" if SCENES[name] != name else ""
        lines.append(f"  {name:<9} {classes}{scenes}")
    lines.append("mixed benchmarks (evaluation images with ground truth for every involved label space):")
    for name, involved in BENCHMARKS.items():
        synonyms = "; ".join(f"{a} = {b}" for a, b in BENCHMARK_SYNONYMS.get(name, ()))
        distinct = ", ".join(BENCHMARK_DISTINCT.get(name, ()))
        lines.append(f"  {name:<9} {' + '.join(involved)}" + (f"  (synonyms: {synonyms})" if synonyms else "")
                     + (f"  (same names, other classes: {distinct}'s)" if distinct else ""))
    lines += [
        "output: DIR/images/*.png, DIR/instances.json (COCO instances, all label spaces),",
        "        DIR/panoptic_<space>.json + DIR/panoptic_<space>/*.png (COCO panoptic); see docs/FORMATS.md.",
        "Image i depends only on (name, split, seed, i): --n 10 writes the first 10 images of --n 200.",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m train world",
        description="Generate and write a source dataset or a mixed benchmark of the inconsistent-semantics world.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", choices=DATASETS, help="a source dataset (training data, one label space)")
    which.add_argument("--benchmark", choices=tuple(BENCHMARKS), help="a mixed benchmark (evaluation split)")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split name; seeds the images (default: train)")
    parser.add_argument("--n", type=int, default=100, help="number of images (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="non-negative random seed (default: 0)")
    parser.add_argument("--size", type=int, default=128, help="image height and width in px, at least 32 (default: 128)")
    parser.add_argument(
        "--domains",
        help="a source dataset only: comma-separated scene kinds to draw instead of its own, cycled image by "
        "image, annotated with the dataset's label space (e.g. street,street,portrait,drive,parts: "
        "half street scenes); default: its own",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace world files in a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.n <= 0:
            raise _UsageError(f"--n must be positive, got {args.n}")
        if args.seed < 0:
            raise _UsageError(f"--seed must be non-negative, got {args.seed}")
        if args.size < 32:
            raise _UsageError(f"--size must be at least 32, got {args.size}")
        name = args.dataset or args.benchmark
        domains = None if args.domains is None else [d.strip() for d in args.domains.split(",") if d.strip()]
        samples = generate(name, args.split, args.n, args.seed, args.size, domains)  # checks before any write
        prepare_out_dir(args.out, args.overwrite)
        samples = tqdm(samples, total=args.n, desc=f"world {name}/{args.split}", unit="img", disable=args.quiet)
        summary = write_world(samples, name, args.out, split=args.split, seed=args.seed)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    except (_UsageError, LabelError, ExportError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {summary['images']} images and {summary['annotations']} instance annotations to {args.out}")
    return 0
