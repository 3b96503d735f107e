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
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from resi_core.coco import encode_mask  # noqa: E402
from resi_core.labels import ClassDef, LabelSpace  # noqa: E402
from resi_core.model import load_checkpoint, read_meta  # noqa: E402
from resi_core.text import get_text_encoder  # noqa: E402
from resi_core.world import MIN_SEGMENT_AREA  # noqa: E402
from resi_core.world.scenes import compose  # noqa: E402
from storage import repo  # noqa: E402
from storage.db import default_sqlite_url, make_engine, make_session_factory, upgrade  # noqa: E402
from storage.errors import Correction  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.models import EventType  # noqa: E402
from train.bench import machine_description  # noqa: E402
from train.holdout import HeldOutImage, TruthMask, evaluate_holdout  # noqa: E402

SPACE = LabelSpace("plants", (ClassDef("grass", isthing=False), ClassDef("tree")))
SCENE = "drive"
SIZE = 128
MARKER = ".finetune-world"  # the output folder is this script's: it may delete and rewrite it
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


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def fill_project(sessions, store: FileStore, name: str, n: int, seed: int) -> None:
    """Project `name` with world images 0..n-1, each labeled (one correction) and accepted."""
    with sessions.begin() as session:
        project_id = repo.create_project(session, name).id
    for index in range(n):
        image, truth = plants_sample(index, seed)
        with sessions.begin() as session:
            row, _ = repo.add_image(session, store, project_id, png(image), f"plants-{index:04d}.png")
            segments = [{"id": f"{index}-{k}", "class_name": c, "label_space": "adhoc", "isthing": t, "score": None,
                         "rle": encode_mask(m)} for k, (c, t, m) in enumerate(truth)]
            version = repo.apply_correction(session, row.id, row.version, "labeler",
                                            Correction(EventType.ADD.value, [], segments))
            repo.accept(session, row.id, version, "labeler")


def test_images(count: int, seed: int) -> list[HeldOutImage]:
    images = []
    for index in range(TEST_OFFSET, TEST_OFFSET + count):
        image, truth = plants_sample(index, seed)
        images.append(HeldOutImage(SIZE, SIZE, lambda image=image: image,
                                   tuple(TruthMask(SPACE.name, c, encode_mask(m)) for c, _, m in truth)))
    return images


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    parser.add_argument("--sizes", default="10,25,50,100", help="accepted images per project (default %(default)s)")
    parser.add_argument("--scopes", default="lsqe,decoder,all", help="default %(default)s")
    parser.add_argument("--iterations", type=int, default=300, help="finetune --iterations (default %(default)s)")
    parser.add_argument("--test-images", type=int, default=100, help="fixed test images (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world images (default %(default)s)")
    parser.add_argument("--work", type=Path, default=ROOT / "resi-data" / "finetune-world",
                        help="scratch folder (database, images, checkpoints); rewritten (default %(default)s)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "finetune-world.json")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "finetune-world.png")
    return parser.parse_args(argv)


def fresh_folder(work: Path) -> None:
    if work.exists():
        if not (work / MARKER).exists():
            raise SystemExit(f"{work} exists and was not made by this script; pass another --work.")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("scratch folder of scripts/finetune_world.py\n")


def plot(runs: list[dict], test_before: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    scopes = list(dict.fromkeys(r["scope"] for r in runs))
    for scope in scopes:
        mine = sorted((r for r in runs if r["scope"] == scope), key=lambda r: r["images"])
        x = [r["images"] for r in mine]
        left.plot(x, [r["test_piq_after"] for r in mine], marker="o", label=f"after, scope {scope}")
        right.plot(x, [r["piq_after"] for r in mine], marker="o", label=f"after, scope {scope}")
    sizes = sorted({r["images"] for r in runs})
    left.plot(sizes, [test_before] * len(sizes), "k--", label="before (LSQE initialised, untrained)")
    befores = {r["images"]: r["piq_before"] for r in runs}
    right.plot(sizes, [befores[n] for n in sizes], "k--", marker="x", label="before")
    left.set_title(f"fixed test set ({runs[0]['test_images']} world images)")
    right.set_title("the command's own held-out fifth")
    for axis in (left, right):
        axis.set_xscale("log")
        axis.set_xticks(sizes, [str(n) for n in sizes])
        axis.set_xlabel("accepted images in the project")
        axis.grid(alpha=0.3)
    left.set_ylabel("PIQ of label space 'plants' (points)")
    left.legend(fontsize=8)
    fig.suptitle("Fine-tuning a new label space (plants: tree, grass) from checkpoints/demo")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    scopes = args.scopes.split(",")
    fresh_folder(args.work)
    engine = make_engine(default_sqlite_url(args.work))
    upgrade(engine)
    sessions = make_session_factory(engine)
    store = FileStore(args.work / "images")
    for n in sizes:
        fill_project(sessions, store, f"plants-{n}", n, args.seed)
    engine.dispose()

    test = test_images(args.test_images, args.seed)
    initial = load_checkpoint(args.checkpoint)
    initial.add_label_space(SPACE, get_text_encoder(initial.config.text_encoder))
    test_before = evaluate_holdout(initial, test, (SPACE.name,))
    print(f"test set ({len(test)} images), LSQE initialised: PIQ {test_before['piq']}", flush=True)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs = []
    for n in sizes:
        for scope in scopes:
            out = args.work / "runs" / f"{n}-{scope}"
            command = [sys.executable, "-m", "train", "finetune", "--project", f"plants-{n}", "--space", SPACE.name,
                       "--checkpoint", str(args.checkpoint), "--scope", scope, "--data-dir", str(args.work),
                       "--out", str(out), "--iterations", str(args.iterations), "--no-progress"]
            load = os.getloadavg()[0]
            start = time.perf_counter()
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
                return done.returncode
            info = read_meta(out)["training"]["finetune"]
            after = evaluate_holdout(load_checkpoint(out), test, (SPACE.name,))
            run = {
                "images": n, "scope": scope, "n_train": info["n_train"],
                "n_holdout": len(info["holdout"]["image_ids"]),
                "piq_before": info["holdout"]["before"]["piq"], "piq_after": info["holdout"]["after"]["piq"],
                "holdout_before": info["holdout"]["before"], "holdout_after": info["holdout"]["after"],
                "test_images": len(test), "test_piq_before": test_before["piq"], "test_piq_after": after["piq"],
                "test_after": after, "active": info["activation"]["active"], "why": info["activation"]["why"],
                "seconds_command": round(seconds, 1), "seconds": info["seconds"],
                "load_1min_before": round(load, 2),
            }
            runs.append(run)
            print(f"{n:4d} images, scope {scope:7s}: held-out PIQ {run['piq_before']} -> {run['piq_after']}, "
                  f"test PIQ {test_before['piq']} -> {after['piq']}, {seconds:.1f} s "
                  f"(fit {info['seconds']['fit']} s; load {load:.2f})", flush=True)
    report = {
        "what": "python -m train finetune --project plants-N --space plants --scope S, from checkpoints/demo, "
                "on N world drive scenes accepted through storage with ad-hoc classes tree (thing) and grass "
                "(stuff); held-out = the command's own fifth by image hash; test = the same "
                f"{len(test)} further world images for every run",
        "command": "python scripts/finetune_world.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "units": "PIQ, PQ, mIoU, AP in points (0-100), our definitions (docs/METRICS.md); seconds of wall clock",
        "checkpoint": str(args.checkpoint.relative_to(ROOT)) if args.checkpoint.is_relative_to(ROOT)
        else str(args.checkpoint),
        "iterations": args.iterations,
        "machine": machine_description(),
        "shared_machine_note": "timed on a machine shared with other jobs; load_1min_before is the load average "
                               "when each run started",
        "test_before": test_before,
        "runs": runs,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    plot(runs, test_before["piq"], args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
