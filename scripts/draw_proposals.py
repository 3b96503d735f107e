"""Draw a checkpoint's ESF-OMI proposals on the first validation images of M1-M5 (docs/demo_proposals.png).

    python scripts/draw_proposals.py --checkpoint checkpoints/demo --data resi-data/bench/data --out docs/demo_proposals.png

Rows are benchmarks (those whose label spaces the checkpoint knows); each pair of tiles is the
image and its segments in class colors (later segments drawn over earlier ones, overlaps blended;
M5's "car (street)" and "car (avenue)" share car's color). The title line of each row names the label
spaces that domain-aware OMI held back on each image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resi_core.model import load_checkpoint  # noqa: E402
from resi_core.predictor import Predictor, SpacesRequest  # noqa: E402
from resi_core.world import BENCHMARK_DISTINCT, BENCHMARK_SYNONYMS, BENCHMARKS  # noqa: E402

PALETTE = {  # the world's classes; anything else gets a color from its name
    "person": (230, 60, 60), "pedestrian": (230, 60, 60), "face": (255, 200, 40), "hair": (150, 70, 200),
    "car": (40, 120, 255), "truck": (0, 200, 220), "vehicle": (40, 120, 255), "wheel": (250, 130, 0),
    "window": (120, 255, 200), "road": (140, 140, 140), "sky": (150, 200, 255), "vegetation": (40, 170, 60),
}


def color(name: str) -> np.ndarray:
    name = name.split(" (")[0]  # "car (avenue)": a distinct space's class, car's color
    if name in PALETTE:
        return np.array(PALETTE[name])
    rng = np.random.default_rng(sum(ord(c) * 31**i for i, c in enumerate(name)) % 2**32)
    return rng.integers(40, 256, size=3)


def overlay(image: np.ndarray, segments) -> np.ndarray:
    out = (image * 0.25).astype(np.float32)
    for s in sorted(segments, key=lambda s: -s.mask.sum()):  # big (stuff) first, small on top
        out[s.mask] = 0.35 * out[s.mask] + 0.65 * color(s.class_name)
    return out.astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="checkpoints/demo")
    parser.add_argument("--data", default="resi-data/bench/data", help="folder with M1..M4/val (python -m train bench writes it)")
    parser.add_argument("--out", default="docs/demo_proposals.png")
    parser.add_argument("--images", type=int, default=3, help="images per benchmark")
    parser.add_argument("--domain-aware", action="store_true", help="as `launch.py --domain-aware` (default off)")
    args = parser.parse_args(argv)
    predictor = Predictor(load_checkpoint(args.checkpoint), None,
                          out_of_domain_threshold=0.98 if args.domain_aware else None)
    rows, legend = [], set()
    for bench, spaces in BENCHMARKS.items():
        if not set(spaces) <= set(predictor.label_spaces):
            print(f"{bench}: skipped, the checkpoint was not trained on {' + '.join(spaces)}")
            continue
        folder = Path(args.data) / bench / "val" / "images"
        files = sorted(folder.glob("*.png"))[: args.images]
        if not files:
            print(f"error: no images in {folder}; run `python -m train bench` first.", file=sys.stderr)
            return 2
        tiles, notes = [], []
        for path in files:
            image = np.asarray(Image.open(path).convert("RGB"))
            request = SpacesRequest(tuple(spaces), BENCHMARK_SYNONYMS.get(bench, ()), BENCHMARK_DISTINCT.get(bench, ()))
            pred = predictor.predict(image, request, with_instances=False)
            legend |= {s.class_name for s in pred.segments}
            tiles += [image, overlay(image, pred.segments)]
            notes.append("held: " + (", ".join(pred.out_of_domain) or "none"))
        strip = np.concatenate(tiles, 1)
        header = Image.new("RGB", (strip.shape[1], 14), "white")
        ImageDraw.Draw(header).text((2, 1), f"{bench} ({' + '.join(spaces)}):  " + " | ".join(notes), fill="black")
        rows.append(np.concatenate([np.asarray(header), strip], 0))
    key = Image.new("RGB", (rows[0].shape[1], 16), "white")
    draw = ImageDraw.Draw(key)
    x = 2
    for name in sorted(legend):
        draw.rectangle([x, 3, x + 10, 13], fill=tuple(int(v) for v in color(name)))
        draw.text((x + 13, 2), name, fill="black")
        x += 16 + 7 * len(name)
    Image.fromarray(np.concatenate([*rows, np.asarray(key)], 0)).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
