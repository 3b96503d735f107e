"""Storage benchmark: the targets of the Storage issue, on SQLite and PostgreSQL.

    .venv/bin/python scripts/bench_storage.py            # SQLite, plus a throwaway PostgreSQL if installed
    .venv/bin/python scripts/bench_storage.py --url postgresql+psycopg://user@host/db   # an existing database

Targets: saving a 20-mask correction on a 1024x1024 image, median < 20 ms (SQLite);
listing a 10,000-image project a page at a time, < 50 ms a page; loading all accepted
annotations of a 1,000-image project, < 2 s. Rows are bulk-inserted to set up; the timed
calls are the repository functions the app uses, each in its own committed transaction.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from sqlalchemy import insert, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storage import repo  # noqa: E402
from storage.db import make_engine, make_session_factory, upgrade  # noqa: E402
from storage.errors import Correction  # noqa: E402
from storage.models import AnnotationSegment, Image, ImageStatus  # noqa: E402

SIDE = 1024
N_MASKS = 20
N_IMAGES = 10_000
N_ACCEPTED = 1_000
PAGE_SIZE = 50


def ellipse_rles(rng: np.random.Generator, n: int) -> list[dict]:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    out = []
    for _ in range(n):
        cy, cx = rng.integers(100, SIDE - 100, size=2)
        ry, rx = rng.integers(20, 200, size=2)
        mask = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(mask))
        out.append({"size": [SIDE, SIDE], "counts": rle["counts"].decode("ascii")})
    return out


def segments(rles: list[dict], rng: np.random.Generator) -> list[dict]:
    return [{"id": repo.new_segment_id(), "class_name": str(rng.choice(["person", "car", "tree", "road"])),
             "label_space": "street", "isthing": True, "score": None, "rle": rle} for rle in rles]


def run(url: str, label: str, saves: int) -> dict[str, float]:
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    rng = np.random.default_rng(0)
    pool = ellipse_rles(rng, 60)

    with sessions.begin() as s:
        project = repo.create_project(s, f"bench {time.time_ns()}")
        project_id = project.id
        rows = [{"project_id": project_id, "sha256": f"{i:064x}", "byte_size": 1, "original_name": f"{i}.jpg",
                 "format": "JPEG", "width": SIDE, "height": SIDE, "exif_orientation": 1,
                 "status": ImageStatus.ACCEPTED if i < N_ACCEPTED else ImageStatus.NEW, "version": 1}
                for i in range(N_IMAGES)]
        s.execute(insert(Image), rows)
        image_ids = [i.id for i in repo.list_images(s, project_id, status="accepted", page_size=500)]
        image_ids += [i.id for i in repo.list_images(s, project_id, status="accepted", page=2, page_size=500)]
        seg_rows = [{"image_id": image_id, "uid": repo.new_segment_id(), "class_name": "person",
                     "label_space": "street", "isthing": True, "score": None,
                     "rle": json.dumps(pool[(image_id + k) % len(pool)], separators=(",", ":"))}
                    for image_id in image_ids for k in range(N_MASKS)]
        s.execute(insert(AnnotationSegment), seg_rows)
        edit_id = repo.list_images(s, project_id, status="new", page_size=1)[0].id
        s.execute(update(Image).where(Image.id == edit_id).values(version=0))

    # A 20-mask correction: the annotator's edit replaces all 20 masks of the image.
    version, current = 0, []
    save_ms = []
    for k in range(saves):
        after = segments([pool[(k + j) % len(pool)] for j in range(N_MASKS)], rng)
        start = time.perf_counter()
        with sessions.begin() as s:
            version = repo.apply_correction(s, edit_id, version, "bench", Correction("edit", current, after))
        save_ms.append((time.perf_counter() - start) * 1000)
        current = after

    page_ms = []
    for page in range(1, N_IMAGES // PAGE_SIZE + 1):
        start = time.perf_counter()
        with sessions.begin() as s:
            images = repo.list_images(s, project_id, page=page, page_size=PAGE_SIZE)
        page_ms.append((time.perf_counter() - start) * 1000)
        assert len(images) == PAGE_SIZE
    start = time.perf_counter()
    with sessions.begin() as s:
        repo.status_counts(s, project_id)
    counts_ms = (time.perf_counter() - start) * 1000

    load_s = []
    for _ in range(3):
        start = time.perf_counter()
        with sessions.begin() as s:
            accepted = repo.accepted_annotations(s, project_id)
        load_s.append(time.perf_counter() - start)
    assert len(accepted) == N_ACCEPTED and all(len(a.segments) == N_MASKS for a in accepted)
    engine.dispose()
    return {
        "backend": label,
        "save_20_masks_median_ms": statistics.median(save_ms),
        "save_20_masks_p90_ms": float(np.percentile(save_ms, 90)),
        "list_page_median_ms": statistics.median(page_ms),
        "list_page_max_ms": max(page_ms),
        "status_counts_ms": counts_ms,
        "load_1000_accepted_s": min(load_s),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="benchmark this database instead of a temporary SQLite + PostgreSQL")
    parser.add_argument("--saves", type=int, default=100, help="number of timed corrections")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = []
    with ExitStack() as stack:
        if args.url:
            results.append(run(args.url, args.url.split(":", 1)[0], args.saves))
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            results.append(run(f"sqlite:///{tmp / 'bench.db'}", "sqlite (WAL, synchronous=FULL)", args.saves))
            from storage.testing import local_postgres

            try:
                base = stack.enter_context(local_postgres(fsync=True))
            except (FileNotFoundError, RuntimeError, OSError) as exc:
                print(f"PostgreSQL skipped: {exc}", file=sys.stderr)
            else:
                results.append(run(f"{base}/postgres", "postgresql 15 (loopback, fsync on)", args.saves))
    for r in results:
        print(f"\n{r['backend']}")
        print(f"  save 20-mask correction, 1024^2: median {r['save_20_masks_median_ms']:.1f} ms "
              f"(p90 {r['save_20_masks_p90_ms']:.1f})   target < 20 ms")
        print(f"  list 10,000 images, 50 a page: median {r['list_page_median_ms']:.1f} ms, "
              f"worst {r['list_page_max_ms']:.1f} ms   target < 50 ms; status counts {r['status_counts_ms']:.1f} ms")
        print(f"  load 1,000 accepted images x 20 masks: {r['load_1000_accepted_s']:.2f} s   target < 2 s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
