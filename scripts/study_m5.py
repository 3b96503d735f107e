"""Did the query sets learn M5's two extents? Coverage of the parts avenue leaves out, per space.

    python scripts/study_m5.py --bench resi-data/bench [--images 100]

On M5 (street + avenue, docs/WORLD.md) one name has two extents: street's car includes its wheels
and windows, avenue's does not (person: hair and hat; road: lane marks). For each method that runs
one pass per label space (RESI, RESI with a linear head, and Text-M2F's weights under ESF-OMI, the
RESI w/o LSQE row), this prints, per class and per space, the share of the ground-truth *body*
pixels (avenue's extent) and of the *left-out* pixels (street's extent minus avenue's) that the
space's predicted segments of that class cover. A model that learned both guides covers the
left-out pixels in street's pass and not in avenue's; one shared query set classified by class
name gives both passes the same masks, so the two coverages are equal (a gap of 0). The union rules
of Merged-M2F and Text-M2F answer both spaces with one mask by construction (docs/BENCH.md).
Read-only: it regenerates the scenes of the bench's M5 images to get the parts' masks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resi_core.model import load_checkpoint  # noqa: E402
from resi_core.predictor import Predictor  # noqa: E402
from resi_core.world import make_sample  # noqa: E402
from resi_core.world.annotate import AVENUE_LEAVES_OUT  # noqa: E402
from train.bench import benchmark_request  # noqa: E402
from train.pretrain import latest_checkpoint  # noqa: E402

ROWS = (("RESI", "resi"), ("RESI (linear head)", "resi_linear"), ("RESI w/o LSQE", "text_m2f"))
SPACES = ("street", "avenue")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", type=Path, default=Path("resi-data/bench"), help="a `python -m train bench` folder")
    parser.add_argument("--images", type=int, default=100, help="first N validation images of M5")
    parser.add_argument("--threshold", type=float, default=0.5, help="score threshold (the bench's)")
    args = parser.parse_args(argv)
    data = args.bench / "data" / "M5" / "val"
    if not (data / "instances.json").is_file():
        print(f"error: no M5 validation images in {data}; run `python -m train bench` first.", file=sys.stderr)
        return 2
    info = json.loads((data / "instances.json").read_text(encoding="utf-8"))
    seed, size = info["info"]["world"]["seed"], info["images"][0]["height"]
    images = sorted(info["images"], key=lambda im: im["id"])[: args.images]
    samples = [make_sample("M5", "val", im["id"] - 1, seed, size) for im in images]
    for im, sample in zip(images, samples, strict=True):
        if not np.array_equal(np.asarray(Image.open(data / "images" / im["file_name"]).convert("RGB")), sample.image):
            print(f"error: {im['file_name']} is not the regenerated M5 image; was the world changed?", file=sys.stderr)
            return 2
    kinds = tuple(AVENUE_LEAVES_OUT)
    print(f"M5, first {len(samples)} validation images (seed {seed}); coverage in % of ground-truth pixels")
    print(f"{'row':<20} {'class':<7} | {'street: body':>12} {'left out':>9} | {'avenue: body':>12} {'left out':>9} | gap")
    for row, method in ROWS:
        run = latest_checkpoint(args.bench / "runs" / method)
        if run is None:
            print(f"{row}: no finished run in {args.bench / 'runs' / method}")
            continue
        predictor = Predictor(load_checkpoint(run), None, score_threshold=args.threshold, cache_size=1)
        # counts[space][kind] = [covered body, body, covered left-out, left-out]
        counts = {s: {k: np.zeros(4, np.int64) for k in kinds} for s in SPACES}
        for sample in samples:
            pred = predictor.predict(sample.image, benchmark_request("M5"), with_instances=False)
            for kind in kinds:
                body = _union([m for c, m, _ in sample.segments["avenue"] if c == kind], sample.image.shape[:2])
                whole = _union([m for c, m, _ in sample.segments["street"] if c == kind], sample.image.shape[:2])
                left_out = whole & ~body
                for space in SPACES:
                    name = pred.mixed.classes[pred.mixed.class_of(space, kind)].name
                    covered = _union([s.mask for s in pred.segments if s.class_name == name], sample.image.shape[:2])
                    counts[space][kind] += [(covered & body).sum(), body.sum(), (covered & left_out).sum(), left_out.sum()]
        for kind in kinds:
            cells = []
            for space in SPACES:
                c = counts[space][kind]
                cells.append((100 * c[0] / max(c[1], 1), 100 * c[2] / max(c[3], 1)))
            gap = cells[0][1] - cells[1][1]
            print(f"{row:<20} {kind:<7} | {cells[0][0]:12.1f} {cells[0][1]:9.1f} | {cells[1][0]:12.1f} {cells[1][1]:9.1f} "
                  f"| {gap:+5.1f}")
    print("gap: street's coverage of the left-out pixels minus avenue's (ideal: about 100; one shared mask: 0)")
    return 0


def _union(masks: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for m in masks:
        out |= m
    return out


if __name__ == "__main__":
    sys.exit(main())
