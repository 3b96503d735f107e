"""RESI over k label spaces against one pass of transformers' Mask2FormerForUniversalSegmentation.

    .venv/bin/python scripts/bench_speed.py                     # 256² and 512², k = 1, 2, 3, CPU
    .venv/bin/python scripts/bench_speed.py --device cuda --repeats 50

Both models are built from the identical Mask2FormerConfig (the demo model's architecture,
configs/world_demo.json) and timed side by side in one run, interleaved, on the same random
input. The baseline is one forward of `Mask2FormerForUniversalSegmentation` (backbone, pixel
decoder, transformer decoder, its linear class head), with the same backbone norm layers as RESI
(GroupNorm here: BatchNorm is replaced in RESI because batches see one dataset's domain). RESI is `encode` once plus one `decode`
with the k query sets stacked on the batch axis, plus the text classifier of every set.
Post-processing is not timed on either side. The target (issue 3): RESI(k) <= (1 + 0.3 (k - 1)) x
baseline. Also times a cached re-ask through the Predictor (features reused) against a cold ask.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resi_core.labels import ClassDef, LabelSpace  # noqa: E402
from resi_core.model import RESIConfig, build_model  # noqa: E402
from resi_core.model.build import mask2former_config, quiet_transformers, replace_batchnorm  # noqa: E402
from resi_core.predictor import AdHocRequest, Predictor, SpacesRequest  # noqa: E402
from scripts.bench_inference import HashTextEncoder  # noqa: E402  (speed does not depend on what embeddings mean)

ROOT = Path(__file__).resolve().parents[1]
SPACES = tuple(
    LabelSpace(name, tuple(ClassDef(f"{name}-{i}") for i in range(n)))
    for name, n in (("street", 6), ("portrait", 5), ("drive", 6))
)


def timed(fn, repeats: int, sync) -> list[float]:
    out = []
    for _ in range(repeats):
        sync()
        tick = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - tick)
    return out


def measure(size: int, model_json: dict, repeats: int, device: torch.device, sync) -> tuple[list[dict], dict]:
    """Side-by-side forward times at size x size, then a cold vs cached Predictor ask."""
    from transformers import Mask2FormerForUniversalSegmentation

    config = RESIConfig.from_json({**model_json, "max_size": size, "text_encoder": HashTextEncoder.id})
    torch.manual_seed(0)
    resi = build_model(config, SPACES, HashTextEncoder(config.text_dim)).to(device).eval()
    m2f_config = mask2former_config(config)
    m2f_config.num_labels = sum(len(s.classes) for s in SPACES)
    baseline = Mask2FormerForUniversalSegmentation(m2f_config)
    # The same backbone normalisation as RESI (GroupNorm for a from-scratch model): the comparison
    # measures what RESI adds (k query sets, text classifier), not the choice of norm layer.
    replace_batchnorm(baseline.model.pixel_level_module.encoder, config.backbone_norm)
    baseline = baseline.to(device).eval()
    pixels = torch.randn(1, 3, size, size, device=device)

    def run_baseline():
        baseline(pixel_values=pixels)

    def run_resi(k: int):
        names = [s.name for s in SPACES[:k]]
        out = resi.decode(resi.encode(pixels), names)
        for i, name in enumerate(names):
            resi.space_logits(out.hidden_states[-1][i], name)

    with torch.inference_mode():
        for _ in range(3):  # warm-up
            run_baseline()
            run_resi(3)
        base_times, resi_times = [], {k: [] for k in (1, 2, 3)}
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            base_times += timed(run_baseline, 1, sync)
            for k in resi_times:
                resi_times[k] += timed(lambda k=k: run_resi(k), 1, sync)
    base = statistics.median(base_times)
    cases = []
    for k, times in resi_times.items():
        ms = statistics.median(times)
        cases.append({
            "size": size, "k": k, "mask2former_ms": round(1000 * base, 1), "resi_ms": round(1000 * ms, 1),
            "ratio": round(ms / base, 3), "target": round(1 + 0.3 * (k - 1), 2),
        })

    # Cached re-ask through the Predictor: the same image with another class set. A (random) domain
    # head is installed so both asks pay for domain-aware OMI, as the demo checkpoint's do.
    spaces = list(resi.label_spaces)
    generator = torch.Generator().manual_seed(0)
    resi.set_domain_head(spaces, torch.randn(len(spaces), resi.pooled_dim(), generator=generator).to(device),
                         torch.zeros(len(spaces), device=device))
    predictor = Predictor(resi, HashTextEncoder(config.text_dim), device=device, max_size=size)
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    cold, warm = [], []
    for _ in range(max(3, repeats // 3)):
        predictor.clear_cache()
        tick = time.perf_counter()
        predictor.predict(image, SpacesRequest(("street", "portrait")), with_instances=False)
        cold.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        again = predictor.predict(image, AdHocRequest(("dog", "tree")), with_instances=False)
        warm.append(time.perf_counter() - tick)
        assert again.cache_hit
    cache = {
        "size": size, "cold_ms": round(1000 * statistics.median(cold), 1),
        "cached_ms": round(1000 * statistics.median(warm), 1),
        "ratio": round(statistics.median(warm) / statistics.median(cold), 3),
    }
    return cases, cache


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=15, help="timed passes per case (median reported)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--config", default=str(ROOT / "configs" / "world_demo.json"))
    args = parser.parse_args(argv)

    quiet_transformers()
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model_json = json.loads(Path(args.config).read_text(encoding="utf-8"))["model"]
    report = {"device": str(device), "torch_threads": torch.get_num_threads(), "repeats": args.repeats, "cases": []}
    for size in args.sizes:
        cases, cache = measure(size, model_json, args.repeats, device, sync)
        report["cases"] += cases
        report.setdefault("cache", []).append(cache)

    print("| size | k | Mask2Former ms | RESI ms | ratio | target |")
    print("|---|---|---|---|---|---|")
    for c in report["cases"]:
        print(f"| {c['size']}² | {c['k']} | {c['mask2former_ms']} | {c['resi_ms']} | {c['ratio']} | ≤ {c['target']} |")
    print()
    for c in report["cache"]:
        print(f"cache {c['size']}²: cold {c['cold_ms']} ms, cached re-ask {c['cached_ms']} ms, ratio {c['ratio']}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
