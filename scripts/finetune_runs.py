"""What scripts/finetune_world.py and scripts/finetune_coco128.py share: a scratch data folder, images
that enter a project the way a labeler's work does, and timed `python -m train finetune` runs."""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from formats.rle import encode_mask  # noqa: E402
from resi_core.model import read_meta  # noqa: E402
from storage import repo  # noqa: E402
from storage.db import default_sqlite_url, make_engine, make_session_factory, upgrade  # noqa: E402
from storage.errors import Correction  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.models import EventType  # noqa: E402

MARKER = ".finetune-scratch"  # a scratch folder of these scripts: they may delete and rewrite it


def common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The flags both scripts have: the base checkpoint, the scopes and the scratch folder `name`."""
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo")
    parser.add_argument("--scopes", default="lsqe,decoder,all", help="default %(default)s")
    parser.add_argument("--work", type=Path, default=ROOT / "resi-data" / name,
                        help="scratch folder (database, images, checkpoints); rewritten (default %(default)s)")


def parsed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, with --threads and the extra `train finetune` flags (after --) added last."""
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of every step, also passed to `train finetune` (default %(default)s: on a "
                        "shared machine more threads can be many times slower)")
    parser.add_argument("extra", nargs="*", help="more `train finetune` flags, after --, e.g. -- --iterations 300")
    args = parser.parse_args(argv)
    args.extra = ["--threads", str(args.threads), *args.extra]
    return args


def fresh_folder(work: Path) -> None:
    """An empty `work` folder; one that exists is deleted only if these scripts made it."""
    if work.exists():
        if not (work / MARKER).exists():
            raise SystemExit(f"{work} exists and was not made by this script; pass another --work.")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text("scratch folder of scripts/finetune_*.py\n")


class Labeler:
    """A project database in `work` whose images are uploaded, labeled in one correction and accepted."""

    def __init__(self, work: Path):
        self.engine = make_engine(default_sqlite_url(work))
        upgrade(self.engine)
        self.sessions = make_session_factory(self.engine)
        self.store = FileStore(work / "images")

    def project(self, name: str) -> int:
        with self.sessions.begin() as session:
            return repo.create_project(session, name).id

    def accept(self, project_id: int, data: bytes, name: str,
               truth: list[tuple[str, bool, np.ndarray]], space: str = "adhoc") -> tuple[int, int]:
        """Upload `data` and accept it with `truth` ((class, isthing, bool mask) each) as segments of
        `space` ("adhoc": classes a labeler typed). Returns the image's (height, width) as stored."""
        with self.sessions.begin() as session:
            row, _ = repo.add_image(session, self.store, project_id, data, name)
            segments = [{"id": f"{row.id}-{k}", "class_name": c, "label_space": space, "isthing": t, "score": None,
                         "rle": encode_mask(m)} for k, (c, t, m) in enumerate(truth)]
            version = repo.apply_correction(session, row.id, row.version, "labeler",
                                            Correction(EventType.ADD.value, [], segments))
            repo.accept(session, row.id, version, "labeler")
            return row.height, row.width

    def close(self) -> None:
        self.engine.dispose()


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def finetune(work: Path, project: str, space: str, scope: str, checkpoint: Path, out: Path,
             extra: list[str]) -> dict[str, Any]:
    """Run `python -m train finetune --project ...` as a user would; its wall time, the 1-minute load
    average when it started, and what the checkpoint records (held-out figures, timings, verdict)."""
    command = [sys.executable, "-m", "train", "finetune", "--project", project, "--space", space,
               "--checkpoint", str(checkpoint), "--scope", scope, "--data-dir", str(work), "--out", str(out),
               "--no-progress", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout, done.stderr, sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}")
    info = read_meta(out)["training"]["finetune"]
    return {"seconds_command": round(seconds, 1), "load_1min_before": round(load, 2), "info": info,
            "said": done.stdout.strip().splitlines()[-1]}


def summary(scope: str, images: int, run: dict[str, Any]) -> dict[str, Any]:
    """The JSON row of one run."""
    info = run["info"]
    holdout = info["holdout"]
    return {
        "images": images, "scope": scope, "n_train": info["n_train"], "n_holdout": len(holdout["image_ids"]),
        "piq_before": holdout["before"]["piq"], "piq_after": holdout["after"]["piq"],
        "holdout_before": holdout["before"], "holdout_after": holdout["after"],
        "active": info["activation"]["active"], "why": info["activation"]["why"],
        "seconds_command": run["seconds_command"], "seconds": info["seconds"],
        "load_1min_before": run["load_1min_before"],
    }
