"""Fine-tuning a label space the demo never saw, on the generated world: the learning curve.

    python scripts/finetune_world.py            # writes docs/finetune-world.json and docs/finetune-world.png

The new label space is `plants: tree (thing), grass (stuff)`. The demo checkpoint knows trees and
grass only as one stuff class, drive's "vegetation"; no label space of it has "tree" or "grass".
Images are the world's drive scenes (roadside trees on grass). Their rendered ground truth enters a
project the way a labeler's work does: each image is uploaded, its tree and grass masks are added
as one correction of ad-hoc classes (label space "adhoc", as typed classes are stored) and the image
is accepted. For each size (10, 25, 50, 100 accepted images) a project holds the first n images, and
`python -m train finetune --project ... --space plants --scope S` runs as a user would run it, once per
scope, each from the demo checkpoint: it holds out a fifth of the images by hash, measures them
before and after, and registers the result. Every result is also scored on the same 100 further
world images, which no project holds, so sizes compare on one test set.

Figures are PIQ etc. in points (0-100), our definitions (docs/METRICS.md). Times are wall-clock
seconds of the whole command (Python start-up included) on a shared machine: the JSON records the
1-minute load average before each run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from finetune_runs import ROOT, Labeler, common_arguments, finetune, fresh_folder, parsed, png, summary

from formats.rle import encode_mask
from resi_core.labels import ClassDef, LabelSpace
from resi_core.model import load_checkpoint
from resi_core.text import get_text_encoder
from resi_core.world import MIN_SEGMENT_AREA, make_sample
from resi_core.world.scenes import compose
from train.bench import machine_description
from train.holdout import HeldOutImage, TruthMask, evaluate_holdout

SPACE = LabelSpace("plants", (ClassDef("grass", isthing=False), ClassDef("tree")))
SCENE = "drive"
SIZE = 128
TEST_OFFSET = 100_000  # test images are indices from here on: never in a project


def plants_sample(index: int, seed: int) -> tuple[np.ndarray, list[tuple[str, bool, np.ndarray]]]:
    """World image `index`: a drive scene and its plants ground truth, (class, isthing, bool mask) each;
    trees one instance each, grass one stuff segment; segments under MIN_SEGMENT_AREA px are dropped."""
    scene = compose(SCENE, np.random.default_rng([seed, 31, index]), SIZE, SIZE)
    truth = [("tree", True, o.mask) for o in scene.objects if o.kind == "tree"]
    grass = [o.mask for o in scene.objects if o.kind == "grass"]
    if grass:
        truth.append(("grass", False, np.logical_or.reduce(grass)))
    return scene.image, [(c, t, m) for c, t, m in truth if np.count_nonzero(m) >= MIN_SEGMENT_AREA]


def test_images(count: int, seed: int) -> list[HeldOutImage]:
    images = []
    for index in range(TEST_OFFSET, TEST_OFFSET + count):
        image, truth = plants_sample(index, seed)
        images.append(HeldOutImage(SIZE, SIZE, lambda image=image: image,
                                   tuple(TruthMask(SPACE.name, c, encode_mask(m)) for c, _, m in truth)))
    return images


def drive_images(count: int, seed: int) -> list[HeldOutImage]:
    """World drive validation images with the drive label space's ground truth: what `decoder` and `all`
    may make worse (they train weights every label space shares)."""
    images = []
    for index in range(count):
        sample = make_sample("drive", "val", index, seed)
        images.append(HeldOutImage(SIZE, SIZE, lambda image=sample.image: image,
                                   tuple(TruthMask("drive", g.class_name, encode_mask(g.mask))
                                         for g in sample.segments["drive"])))
    return images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, "finetune-world")
    parser.add_argument("--sizes", default="10,25,50,100", help="accepted images per project (default %(default)s)")
    parser.add_argument("--test-images", type=int, default=100, help="fixed test images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world images (default %(default)s)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "finetune-world.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "finetune-world.png")
    parser.add_argument("--replot", action="store_true", help="only redraw --plot from an existing --json")
    return parsed(parser, argv)


def plot(report: dict, path: Path) -> None:
    """Three panels against the number of accepted images: the new space's PIQ on the fixed test set and
    on the command's own held-out fifth, and the drive label space's PIQ (what decoder and all cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    sizes = sorted({r["images"] for r in runs})
    for scope in dict.fromkeys(r["scope"] for r in runs):
        mine = sorted((r for r in runs if r["scope"] == scope), key=lambda r: r["images"])
        x = [r["images"] for r in mine]
        for axis, key in zip(axes, ("test_piq_after", "piq_after", "drive_piq_after"), strict=True):
            axis.plot(x, [r[key] for r in mine], marker="o", label=f"after, scope {scope}")
    axes[0].plot(sizes, [report["test_before"]["piq"]] * len(sizes), "k--", label="before (initial LSQE)")
    befores = {r["images"]: r["piq_before"] for r in runs}
    axes[1].plot(sizes, [befores[n] for n in sizes], "k--", marker="x", label="before")
    axes[2].plot(sizes, [report["drive_before"]["piq"]] * len(sizes), "k--", label="demo checkpoint")
    titles = (f"'plants' on {runs[0]['test_images']} fixed test images", "'plants' on the command's held-out fifth",
              f"'drive' (a trained space) on {runs[0]['test_images']} drive images")
    for axis, title in zip(axes, titles, strict=True):
        axis.set_title(title, fontsize=10)
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.set_xlabel("accepted images in the project")
        axis.set_ylabel("PIQ (points)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    fig.suptitle("Fine-tuning a new label space, plants: tree, grass, from checkpoints/demo (world drive scenes)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        plot(json.loads(args.json.read_text()), args.plot)
        print(f"wrote {args.plot} from {args.json}")
        return 0
    torch.set_num_threads(args.threads)
    sizes = [int(n) for n in args.sizes.split(",")]
    scopes = args.scopes.split(",")
    fresh_folder(args.work)
    labeler = Labeler(args.work)
    for n in sizes:
        project_id = labeler.project(f"plants-{n}")
        for index in range(n):
            image, truth = plants_sample(index, args.seed)
            labeler.accept(project_id, png(image), f"plants-{index:04d}.png", truth)
    labeler.close()

    test = test_images(args.test_images, args.seed)
    initial = load_checkpoint(args.checkpoint)
    initial.add_label_space(SPACE, get_text_encoder(initial.config.text_encoder))
    test_before = evaluate_holdout(initial, test, (SPACE.name,))
    drive = drive_images(args.test_images, args.seed)
    drive_before = evaluate_holdout(initial, drive, ("drive",))
    print(f"test set ({len(test)} images), LSQE initialised: PIQ {test_before['piq']}; drive's own PIQ on "
          f"{len(drive)} drive images {drive_before['piq']}", flush=True)

    runs = []
    for n in sizes:
        for scope in scopes:
            out = args.work / "runs" / f"{n}-{scope}"
            run = finetune(args.work, f"plants-{n}", SPACE.name, scope, args.checkpoint, out, args.extra)
            tuned = load_checkpoint(out)
            after = evaluate_holdout(tuned, test, (SPACE.name,))
            drive_after = evaluate_holdout(tuned, drive, ("drive",))
            row = {**summary(scope, n, run), "test_images": len(test), "test_piq_before": test_before["piq"],
                   "test_piq_after": after["piq"], "test_after": after,
                   "drive_piq_before": drive_before["piq"], "drive_piq_after": drive_after["piq"]}
            runs.append(row)
            print(f"{n:4d} images, scope {scope:7s}: held-out PIQ {row['piq_before']} -> {row['piq_after']}, "
                  f"test PIQ {test_before['piq']} -> {after['piq']}, drive PIQ {drive_before['piq']} -> "
                  f"{drive_after['piq']}, {row['seconds_command']:.1f} s "
                  f"(fit {row['seconds']['fit']} s; load {row['load_1min_before']:.2f})", flush=True)
    report = {
        "what": "python -m train finetune --project plants-N --space plants --scope S, from the demo checkpoint, "
                "on N world drive scenes accepted through storage with ad-hoc classes tree (thing) and grass "
                "(stuff); held-out = the command's own fifth by image hash; test = the same "
                f"{len(test)} further world images for every run; drive_piq = the demo's own drive label space on "
                f"{len(test)} world drive validation images, which decoder and all may change",
        "command": " ".join(["python scripts/finetune_world.py", *(argv if argv is not None else sys.argv[1:])]),
        "units": "PIQ, PQ, mIoU, AP, overlap recall in points (0-100), our definitions (docs/METRICS.md); "
                 "seconds of wall clock",
        "checkpoint": str(args.checkpoint.relative_to(ROOT)) if args.checkpoint.is_relative_to(ROOT)
        else str(args.checkpoint),
        "finetune_flags": args.extra,
        "machine": machine_description(),
        "shared_machine_note": "timed on a machine shared with other jobs; load_1min_before is the 1-minute load "
                               "average when each run started (the machine has the cores named in 'machine')",
        "test_before": test_before,
        "drive_before": drive_before,
        "runs": runs,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
