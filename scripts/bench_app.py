"""Latency of the app's handlers with a real checkpoint: `python scripts/bench_app.py --checkpoint DIR`.

Measures, on a 512x512 crop of a coco128 photo: propose (median of --repeats, fresh feature cache each
time), re-propose with another class set (features cached), the save latency of one correction, and
4 concurrent users proposing and relabeling through gradio_client against a running app.
Prints a JSON summary. Needs the demo model for meaningful numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.class_sets.handlers import save_class_set  # noqa: E402
from app.config import DEFAULT_CHECKPOINT, AppConfig  # noqa: E402
from app.context import UserState, class_options, load_context, trained_spaces  # noqa: E402
from app.labeling.edits import add_segment, relabel  # noqa: E402
from app.labeling.images import load_image  # noqa: E402
from app.labeling.propose import propose  # noqa: E402
from app.projects.handlers import create_project  # noqa: E402
from app.projects.upload import upload_images  # noqa: E402
from app.services import Services, open_services  # noqa: E402
from storage import repo  # noqa: E402
from tests.shared_data import COCO128_IMAGES, MISSING  # noqa: E402

COCO = COCO128_IMAGES


def photo_512(path: Path) -> bytes:
    with Image.open(path) as img:
        img = img.convert("RGB").resize((512, 512))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def setup_project(svc: Services, name: str, photos: Sequence[Path], tmp: Path) -> UserState:
    state = create_project(svc, name)
    paths = []
    for i, photo in enumerate(photos):
        path = tmp / f"{name}-{i}.png"
        path.write_bytes(photo_512(photo))
        paths.append(path)
    report = upload_images(svc, state, paths)
    spaces = [s.name for s in trained_spaces(svc)]
    save_class_set(svc, state, spaces, "", [])
    return replace(state, image_id=report.first_image_id)


def bench_handlers(svc: Services, tmp: Path, repeats: int) -> dict[str, float]:
    state = setup_project(svc, "bench", sorted(COCO.glob("*.jpg"))[:1], tmp)
    predictor = svc.model.predictor()

    def cold_propose() -> None:
        predictor.clear_cache()
        propose(svc, state, "bench")

    propose(svc, state, "bench")  # warm-up: loads the model
    propose_ms = timed(cold_propose, repeats)
    save_class_set(svc, state, [], "person, dog, car", [])
    state = load_image(svc, state)[0]

    def re_propose() -> None:
        nonlocal state
        state = propose(svc, state, "bench").state

    repropose_ms = timed(re_propose, repeats)
    options = class_options(svc, load_context(svc, state))
    new = add_segment(svc, state, "bench", {"layers": [_square(512)]}, options[0])
    state = new.state

    def save() -> None:
        nonlocal state
        state = relabel(svc, state, "bench", state.selected_id, options[len(options) // 2]).state

    save_ms = timed(save, repeats)
    return {
        "propose_median_ms": statistics.median(propose_ms),
        "repropose_other_classes_median_ms": statistics.median(repropose_ms),
        "save_correction_median_ms": statistics.median(save_ms),
    }


def _square(size: int):
    import numpy as np

    layer = np.zeros((size, size, 4), dtype=np.uint8)
    layer[size // 4 : size // 2, size // 4 : size // 2, 3] = 255
    return layer


def bench_concurrent(svc: Services, config: AppConfig, tmp: Path, users: int) -> dict[str, float]:
    """`users` clients at once, each on its own project: open project, propose, accept."""
    from gradio_client import Client

    from app.ui import build_ui, launch_kwargs

    names = {}
    for i in range(users):
        state = setup_project(svc, f"user{i}", sorted(COCO.glob("*.jpg"))[i + 1 : i + 2], tmp)
        names[f"user{i}"] = state.image_id
    demo = build_ui(svc)
    _, url, _ = demo.launch(**launch_kwargs(config), prevent_thread_lock=True, quiet=True)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(name: str, image_id: int) -> None:
        client = Client(url, verbose=False)
        client.predict(name, api_name="/open_project")
        start = time.perf_counter()
        client.predict(image_id, [], api_name="/open_image")
        client.predict([], api_name="/propose")
        with lock:
            latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=one, args=item) for item in names.items()]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = (time.perf_counter() - start) * 1000
    demo.close()
    with svc.sessions() as session:  # nothing dropped: every user's image now has a saved proposal
        saved = sum(repo.latest_proposal(session, image_id) is not None for image_id in names.values())
    return {"concurrent_users": users, "concurrent_completed": len(latencies), "concurrent_proposals_saved": saved,
            "concurrent_wall_ms": wall, "concurrent_max_ms": max(latencies) if latencies else float("nan")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--port", type=int, default=7870)
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        print(f"No checkpoint at {args.checkpoint}; pass --checkpoint.", file=sys.stderr)
        return 2
    if MISSING:
        print(MISSING, file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = AppConfig(data_dir=tmp / "data", checkpoint=args.checkpoint, port=args.port)
        svc = open_services(config)
        results = bench_handlers(svc, tmp, args.repeats)
        results |= bench_concurrent(svc, config, tmp, args.users)
    print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
