"""Inference benchmark: Predictor latency per stage on real photos (coco128 by default).

    .venv/bin/python scripts/bench_inference.py                       # tiny random model, 3 label spaces
    .venv/bin/python scripts/bench_inference.py --checkpoint runs/resi --images 50 --device cuda

For each photo it times a cold request (backbone + pixel decoder + one batched decoder
pass for all label spaces + ESF-OMI at full resolution), then a second request on the
same photo with other classes (an ad-hoc class set), which must hit the feature cache.
Prints medians per stage in milliseconds as JSON. Quality is not measured here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resi_core.image_io import load_image  # noqa: E402
from resi_core.labels import ClassDef, LabelSpace  # noqa: E402
from resi_core.predictor import AdHocRequest, Predictor, SpacesRequest  # noqa: E402
from tests.shared_data import COCO128_IMAGES, MISSING  # noqa: E402

RANDOM_SPACES = (
    LabelSpace("street", (ClassDef("person"), ClassDef("car"), ClassDef("road", isthing=False))),
    LabelSpace("portrait", (ClassDef("face"), ClassDef("hair"))),
    LabelSpace("parts", (ClassDef("wheel"), ClassDef("window"))),
)


class HashTextEncoder:
    """Stand-in text encoder for a random model: a fixed random unit vector per name (no weights needed)."""

    id = "bench-hash"

    def __init__(self, dim: int):
        self.dim = dim

    def encode(self, names):
        rows = [
            torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, n)))) for n in names
        ]
        return F.normalize(torch.stack(rows), dim=-1)  # [K, Dt]


def build_predictor(args: argparse.Namespace) -> Predictor:
    from resi_core.model import RESIConfig, build_model, load_checkpoint

    if args.checkpoint:
        from resi_core.model import read_meta
        from resi_core.text import get_text_encoder

        encoder = get_text_encoder(read_meta(Path(args.checkpoint))["text_encoder"])
        model = load_checkpoint(args.checkpoint, encoder.id)
    else:
        torch.manual_seed(0)
        config = RESIConfig(text_encoder=HashTextEncoder.id, max_size=args.max_size or 512)
        encoder = HashTextEncoder(config.text_dim)
        model = build_model(config, RANDOM_SPACES, encoder)
    return Predictor(model, encoder, device=args.device, max_size=args.max_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20, help="how many photos to time (default 20)")
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="folder of .jpg photos (default: coco128's, beside the repository or at $RESI_COCO128)")
    parser.add_argument("--checkpoint", help="RESI checkpoint folder; default: a tiny random model")
    parser.add_argument("--max-size", type=int, help="model input long side (default: the model's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.image_dir is None:
        if MISSING:
            parser.error(MISSING)
        args.image_dir = COCO128_IMAGES

    paths = sorted(args.image_dir.glob("*.jpg"))[: args.images]
    if not paths:
        parser.error(f"no .jpg photos in {args.image_dir}")
    predictor = build_predictor(args)
    spaces = tuple(predictor.label_spaces)
    predictor.predict(load_image(paths[0]), SpacesRequest(spaces))  # warm-up
    predictor.clear_cache()

    cold: dict[str, list[float]] = {}
    cached: dict[str, list[float]] = {}
    hits = 0
    for path in tqdm(paths, desc="photos", unit="img"):
        image = load_image(path)
        first = predictor.predict(image, SpacesRequest(spaces))
        second = predictor.predict(image, AdHocRequest(("dog", "bicycle", "sky")))
        hits += second.cache_hit
        for store, prediction in ((cold, first), (cached, second)):
            for stage, seconds in prediction.timings.items():
                store.setdefault(stage, []).append(seconds * 1000)

    def medians(store: dict[str, list[float]]) -> dict[str, float]:
        return {stage: round(statistics.median(v), 2) for stage, v in store.items()}

    report = {
        "device": str(predictor.device),
        "images": len(paths),
        "label_spaces": list(spaces),
        "max_size": predictor.max_size,
        "median_image_hw": [int(np.median([load_image(p).shape[i] for p in paths[:5]])) for i in (0, 1)],
        "cold_ms": medians(cold),
        "cached_adhoc_ms": medians(cached),
        "cache_hits": f"{hits}/{len(paths)}",
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
