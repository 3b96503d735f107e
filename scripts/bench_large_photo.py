"""Proposing on a large photo: time and peak extra memory, as the app's Propose does it.

    .venv/bin/python scripts/bench_large_photo.py                        # 6000x4000 (24 MP), demo checkpoint
    .venv/bin/python scripts/bench_large_photo.py --size 7000x5000 --compare --app

A coco128 photo is enlarged to --size. Each run clears the feature cache, then does what the app's
Propose does with the model: ESF-OMI over every label space of the checkpoint (no AP instance list) and
the COCO RLE of every segment (what is stored). Prints, as JSON: wall and CPU seconds per run (median and
worst), the predictor's stages, and the peak extra memory (resident set high-water mark above the
level before the first run, with the model and the decoded photo already loaded). With --compare, the
same with post-processing at full resolution (`postprocess_max_side=None`, how it worked before). With
--app, also the app's Propose handler on the photo uploaded as a JPEG, as a user waits for it.
The machine's load average is printed too: on a shared machine, wall times are rough.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from formats.rle import encode_mask  # noqa: E402
from resi_core.model import load_checkpoint, read_meta  # noqa: E402
from resi_core.predictor import POSTPROCESS_MAX_SIDE, Predictor, SpacesRequest  # noqa: E402
from resi_core.text import get_text_encoder  # noqa: E402
from tests.shared_data import COCO128_IMAGES  # noqa: E402


def _status_kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int | str = "self") -> bool:
    """Reset the resident-set high-water mark (Linux: write 5 to clear_refs); False where unsupported."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def measure(predictor: Predictor, image: np.ndarray, runs: int) -> dict[str, object]:
    request = SpacesRequest(tuple(predictor.label_spaces))
    predictor.predict(image, request, with_instances=False)  # warm-up: first-call allocations, thread pools
    predictor.clear_cache()
    reset_peak()
    before = _status_kb("VmRSS")
    walls, cpus, stages = [], [], []
    for _ in range(runs):
        predictor.clear_cache()
        start, cpu = time.perf_counter(), cpu_seconds()
        prediction = predictor.predict(image, request, with_instances=False)
        rles = [encode_mask(s.mask) for s in prediction.segments]
        walls.append(time.perf_counter() - start)
        cpus.append(cpu_seconds() - cpu)
        stages.append({**prediction.timings, "rle": walls[-1] - prediction.timings["total"]})
        del prediction, rles
    peak = _status_kb("VmHWM")
    return {
        "postprocess_max_side": predictor.postprocess_max_side,
        "wall_s_median": round(statistics.median(walls), 3),
        "wall_s_worst": round(max(walls), 3),
        "cpu_s_median": round(statistics.median(cpus), 3),
        "stages_s_median": {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]},
        "peak_extra_mb": round((peak - before) / 1024, 1),
    }


def measure_app(checkpoint: Path, image: np.ndarray, runs: int) -> dict[str, object]:
    """The app's Propose handler on the photo uploaded as a JPEG (decode, model, RLE, save, reload), and the
    Label tab's values drawn from it (display-size overlay and editor), with a fresh feature cache and
    image cache each run."""
    import io
    import tempfile

    from PIL import Image as PILImage

    from app.class_sets.handlers import save_class_set
    from app.config import AppConfig
    from app.context import trained_spaces
    from app.labeling import view
    from app.labeling.images import open_image
    from app.labeling.propose import propose
    from app.projects.handlers import create_project
    from app.projects.upload import upload_images
    from app.render import picture_file
    from app.services import open_services

    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo.jpg"
        buf = io.BytesIO()
        PILImage.fromarray(image).save(buf, format="JPEG", quality=92)
        photo.write_bytes(buf.getvalue())
        svc = open_services(AppConfig(data_dir=Path(tmp) / "data", checkpoint=checkpoint))
        state = create_project(svc, "large")
        image_id = upload_images(svc, state, [photo]).first_image_id
        save_class_set(svc, state, [s.name for s in trained_spaces(svc)], "", [])
        state = open_image(svc, state, image_id, "bench")[0]
        state = propose(svc, state, "bench").state  # warm-up: loads the model
        # The model runs in a process of its own (the app's default): its memory is measured there.
        model_pid = getattr(svc.model.predictor(), "pid", None)
        reset_peak()
        before = _status_kb("VmRSS")
        if model_pid is not None:
            reset_peak(model_pid)
            model_before = _status_kb("VmRSS", model_pid)
        walls, cpus = [], []
        for _ in range(runs):
            svc.model.predictor().clear_cache()
            svc.images._items.clear()
            start, cpu = time.perf_counter(), cpu_seconds()
            result = propose(svc, state, "bench")
            values = view.image(result.state, result.view, result.message)  # the Label tab's values
            picture_file(values["overview"], tmp)  # and its picture, as the tab hands it to the browser
            walls.append(time.perf_counter() - start)
            cpus.append(cpu_seconds() - cpu)
            state = result.state
            del result
        peak = _status_kb("VmHWM")
        model_extra = (_status_kb("VmHWM", model_pid) - model_before) / 1024 if model_pid is not None else 0.0
        svc.model.close()
    return {"what": "app Propose handler + Label tab values", "wall_s_median": round(statistics.median(walls), 3),
            "wall_s_worst": round(max(walls), 3), "cpu_s_median": round(statistics.median(cpus), 3),
            "cpu_s_note": "the app's process only" if model_pid is not None else "the app's process, model included",
            "peak_extra_mb": round((peak - before) / 1024 + model_extra, 1),
            "peak_extra_mb_model_process": round(model_extra, 1) if model_pid is not None else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("checkpoints/demo"))
    parser.add_argument("--size", default="6000x4000", help="WIDTHxHEIGHT of the photo (default 6000x4000, 24 MP)")
    parser.add_argument("--photo", type=Path, help="photo to enlarge (default: the first coco128 photo)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--compare", action="store_true", help="also time full-resolution post-processing")
    parser.add_argument("--app", action="store_true",
                        help="also time the app's Propose on the photo uploaded as a JPEG (decode, model, RLE, "
                        "save, reload, the Label tab's values)")
    args = parser.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size {args.size!r} is not WIDTHxHEIGHT")
    photo = args.photo or next(iter(sorted(COCO128_IMAGES.glob("*.jpg"))), None)
    if photo is None or not Path(photo).is_file():
        parser.error("no photo: pass --photo")
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = get_text_encoder(read_meta(args.checkpoint)["text_encoder"])
    model = load_checkpoint(args.checkpoint, encoder.id)
    image = np.asarray(Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BILINEAR))
    report: dict[str, object] = {
        "photo": f"{Path(photo).name} enlarged to {width}x{height} ({width * height / 1e6:.1f} MP)",
        "checkpoint": str(args.checkpoint),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "runs": args.runs,
    }
    sides = [POSTPROCESS_MAX_SIDE] + ([None] if args.compare else [])
    report["results"] = [measure(Predictor(model, encoder, postprocess_max_side=side), image, args.runs)
                         for side in sides]
    if args.app:
        report["results"].append(measure_app(args.checkpoint, image, args.runs))  # type: ignore[union-attr]
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
