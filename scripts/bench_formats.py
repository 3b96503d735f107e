"""Dataset import and export speed (issue targets): export 1,000 images x 20 masks as COCO instances
in <= 10 s and as COCO panoptic in <= 30 s; import coco128 (instances) in <= 5 s.

Prints figures; nothing here passes or fails. The export runs the code `db export` runs
(storage.export.coco_instances + write_json, storage.export.write_panoptic) on annotations loaded
with repo.accepted_annotations from a temporary SQLite database; the import is storage.importer's
import_coco, as `db import` runs it, into a fresh one.

    .venv/bin/python scripts/bench_formats.py [--images 1000] [--masks 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formats.coco import write_json  # noqa: E402
from formats.rle import encode_mask  # noqa: E402
from storage import repo  # noqa: E402
from storage.db import make_engine, make_session_factory, upgrade  # noqa: E402
from storage.export import coco_instances, write_panoptic  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.importer import import_coco  # noqa: E402
from tests.shared_data import COCO128  # noqa: E402

H, W = 480, 640
CLASSES = [("person", True), ("car", True), ("tree", True), ("road", False), ("sky", False)]


def _png(seed: int) -> bytes:
    pixels = np.full((H, W, 3), seed % 251, dtype=np.uint8)
    pixels[0, 0] = (seed // 251 % 256, seed % 256, 7)  # every image's bytes differ
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _segments(rng: np.random.Generator, n: int) -> list[dict]:
    """n masks: ellipses of random size and place (they overlap, as real annotations do)."""
    yy, xx = np.mgrid[:H, :W]
    out = []
    for k in range(n):
        cy, cx = rng.uniform(0, H), rng.uniform(0, W)
        ry, rx = rng.uniform(10, H / 3), rng.uniform(10, W / 3)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        name, isthing = CLASSES[k % len(CLASSES)]
        out.append({"id": f"s{k}", "class_name": name, "label_space": "bench", "isthing": isthing,
                    "score": None, "rle": encode_mask(mask)})
    return out


def bench_export(root: Path, n_images: int, n_masks: int) -> dict:
    engine = make_engine(f"sqlite:///{root / 'export.db'}")
    upgrade(engine)
    sessions = make_session_factory(engine)
    store = FileStore(root / "store")
    rng = np.random.default_rng(0)
    with sessions.begin() as s:
        project = repo.create_project(s, "bench")
        for i in range(n_images):
            image, _ = repo.add_image(s, store, project.id, _png(i), f"{i}.png")
            version = repo.apply_correction(s, image.id, 0, "bench",
                                            repo.Correction("add", [], _segments(rng, n_masks)))
            repo.accept(s, image.id, version, "bench")
    with sessions() as s:
        start = time.perf_counter()
        images = repo.accepted_annotations(s, project.id)
        load_s = time.perf_counter() - start
    out = root / "out"
    start, cpu = time.perf_counter(), time.process_time()
    instances = coco_instances(images)
    write_json(out / "instances.json", instances, indent=None)
    coco_s, coco_cpu = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    _, given_up = write_panoptic(images, instances["categories"], out / "panoptic")
    panoptic_s, panoptic_cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"images": n_images, "masks_per_image": n_masks, "load_s": round(load_s, 2),
            "coco_instances_s": round(coco_s, 2), "coco_instances_cpu_s": round(coco_cpu, 2),
            "panoptic_s": round(panoptic_s, 2), "panoptic_cpu_s": round(panoptic_cpu, 2),
            "overlapping_segments_resolved": len(given_up)}


def bench_import(root: Path) -> dict | None:
    instances = COCO128 / "annotations_instances" / "instances_train2017.json"
    if not instances.is_file():
        return None
    engine = make_engine(f"sqlite:///{root / 'import.db'}")
    upgrade(engine)
    start = time.perf_counter()
    cpu = time.process_time()
    with make_session_factory(engine).begin() as s:
        report = import_coco(s, FileStore(root / "import-store"), "coco128", instances,
                             COCO128 / "images" / "train2017", label_space="coco")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    engine.dispose()
    return {"images": report.images, "segments": report.segments, "import_s": round(wall, 2),
            "import_cpu_s": round(cpu, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--masks", type=int, default=20)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="resi-bench-formats-") as tmp:
        figures = {"load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
                   "export": bench_export(Path(tmp), args.images, args.masks), "import_coco128": bench_import(Path(tmp))}
    e, i = figures["export"], figures["import_coco128"]
    print(f"export {e['images']} images x {e['masks_per_image']} masks ({W}x{H}): loading {e['load_s']} s, "
          f"COCO instances {e['coco_instances_s']} s wall, {e['coco_instances_cpu_s']} s CPU (target <= 10 s); "
          f"COCO panoptic {e['panoptic_s']} s wall, {e['panoptic_cpu_s']} s CPU (target <= 30 s; "
          f"{e['overlapping_segments_resolved']} segments gave up overlapping pixels)")
    print("import coco128: not found (set RESI_COCO128)" if i is None else
          f"import coco128 instances ({i['images']} images, {i['segments']} segments): {i['import_s']} s wall, "
          f"{i['import_cpu_s']} s CPU (target <= 5 s)")
    print(f"load average {figures['load_average']} on {figures['cpus']} CPUs")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
