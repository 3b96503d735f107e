"""`python -m train prelabel`: propose segments for every image of a project that has none yet.

The images still new (never proposed, never edited) are proposed one by one with the project's
current class set and model, as the app's Propose button would, and each image's proposal and the
annotation it seeds are written in one transaction. So a job that is stopped or killed leaves no
half-written image, and running the command again continues with the images still new. With
`--job-id` (the app's "Propose all" starts it so) the run reports its status and progress to that
row of the `jobs` table (train/jobs.py), as fine-tuning does.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from formats.images import ImageError, decode_image
from formats.names import SPACE_JOIN
from resi_core.model import load_checkpoint
from resi_core.predictor import Predictor, Request, RequestError, class_set_request
from resi_core.text import get_text_encoder
from storage import repo
from storage.db import make_session_factory
from storage.errors import InvalidInput
from storage.files import FileStore, path_sha256
from storage.models import ImageStatus
from train.database import add_database_arguments, open_database
from train.jobs import JobReporter, run_as_job
from train.pretrain import latest_checkpoint, pick_device
from train.threads import use_threads

PRELABEL_USER = "model"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train prelabel",
        description="Propose segments for every image of a project that has none yet (status new), with the\n"
        "project's current class set and its active model, as the app's Propose button does. Each image is\n"
        "written in one transaction, so a stopped run leaves no half-written image; run it again to\n"
        "continue with the images still new.",
        epilog="Examples:\n"
        "  python -m train prelabel --project Streets\n"
        "  python -m train prelabel --project Streets --checkpoint checkpoints/demo --limit 100\n"
        "  (the app's \"Propose all\" runs it with --job-id N and shows the job's progress)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--project", required=True, help="project name")
    parser.add_argument("--checkpoint", type=Path,
                        help="RESI checkpoint folder (default: the project's active model)")
    parser.add_argument("--limit", type=int, help="propose for at most this many images (default: all new ones)")
    parser.add_argument("--user", default=PRELABEL_USER,
                        help="name recorded on the proposals' history events (default %(default)s)")
    parser.add_argument("--no-domain-aware", action="store_true",
                        help="no domain-aware OMI (as `python launch.py --no-domain-aware`)")
    add_database_arguments(parser.add_argument_group("database"))
    parser.add_argument("--job-id", type=int,
                        help="report to this row of the jobs table (the app passes it): running with this "
                        "process id, progress about once a second, then done with the counts, or failed")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if args.job_id is not None and args.job_id < 1:
        parser.error("--job-id must be a positive job id")
    return args


def model_version(sessions: sessionmaker[Session], project_id: int, checkpoint: Path, meta: dict[str, Any]) -> int:
    """The project's version of `checkpoint` (by hash), registered on first use (active if none is)."""
    sha = path_sha256(checkpoint)
    with sessions.begin() as session:
        version = repo.model_version_by_checkpoint(session, project_id, sha)
        if version is None:
            version = repo.register_model_version(
                session, project_id, f"{checkpoint.name}-{sha[:8]}", str(checkpoint.resolve()), sha,
                meta["label_spaces"], {"text_encoder": meta["text_encoder"]},
                active=repo.active_model_version(session, project_id) is None,
            )
        return version.id


def storage_rows(prediction: Any) -> list[dict[str, Any]]:
    """Predicted segments as stored segments (COCO RLE; a fused segment's spaces joined, "street+adhoc")."""
    return [repo.Segment(s.id, s.class_name, SPACE_JOIN.join(s.label_spaces), s.isthing, s.to_rle(),
                         float(min(max(s.score, 0.0), 1.0))).to_json() for s in prediction.segments]


def propose_one(sessions: sessionmaker[Session], store: FileStore, predictor: Predictor, request: Request,
                image_id: int, version_id: int, class_set_id: int, user: str) -> str:
    """Propose for one image in one transaction: "proposed", "unfamiliar" (proposed, and the model flagged
    the image as unlike its training data: the app opens it with the proposals hidden), or "taken" when it
    is no longer new (someone got there first)."""
    with sessions() as session:
        image = repo.get_image(session, image_id)
        if image.status != ImageStatus.NEW:
            return "taken"
        sha = image.sha256
    rgb = decode_image(store.read(sha))
    start = time.perf_counter()
    prediction = predictor.predict(rgb, request, with_instances=False)
    elapsed_ms = (time.perf_counter() - start) * 1000
    rows = storage_rows(prediction)
    with sessions.begin() as session:
        repo.lock_image(session, image_id)
        if repo.get_image(session, image_id).status != ImageStatus.NEW:  # proposed or edited while the model ran
            return "taken"
        repo.save_proposal(session, image_id, version_id, class_set_id, rows, elapsed_ms, user,
                           unfamiliar=prediction.unfamiliar)
    return "unfamiliar" if prediction.unfamiliar else "proposed"


def run(args: argparse.Namespace, job: JobReporter | None = None) -> int:
    use_threads(args.threads)
    device = pick_device(args.device)
    engine = open_database(args)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:
            project = repo.get_project_by_name(session, args.project)
            project_id, name = project.id, project.name
            class_set = repo.current_class_set(session, project_id)
            if class_set is None:
                raise InvalidInput(f"Project {name!r} has no class set yet: choose what to look for first (the "
                                   "app's Class set tab).")
            spaces, adhoc = list(class_set.label_spaces), list(class_set.adhoc_classes)
            synonyms = [tuple(pair) for pair in class_set.synonyms]
            class_set_id = class_set.id
            active = repo.active_model_version(session, project_id)
            ids = repo.image_ids(session, project_id, [ImageStatus.NEW])
        if args.checkpoint is None and active is None:
            raise InvalidInput(f"Project {name!r} has no active model yet: pass --checkpoint (e.g. checkpoints/demo).")
        checkpoint = args.checkpoint if args.checkpoint is not None else Path(active.checkpoint_path)  # type: ignore[union-attr]
        checkpoint = latest_checkpoint(checkpoint) or checkpoint
        model = load_checkpoint(checkpoint)
        try:
            request = class_set_request(model.label_spaces, spaces, adhoc, synonyms)  # type: ignore[arg-type]
        except RequestError as err:
            raise InvalidInput(f"Project {name!r}'s class set does not fit {checkpoint}: {err}") from None
        if not ids:
            print(f"Nothing to propose: every image of project {name!r} has proposals or edits already.")
            if job is not None:
                job.done("Nothing to propose: every image has proposals or edits already.",
                         {"proposed": 0, "images": 0})
            return 0
        ids = ids[: args.limit] if args.limit is not None else ids
        encoder = get_text_encoder(model.config.text_encoder) if adhoc else None
        options = {"out_of_domain_threshold": None} if args.no_domain_aware else {}
        predictor = Predictor(model, encoder, device=device, **options)
        version_id = model_version(sessions, project_id, checkpoint, {
            "label_spaces": [s.to_json() for s in model.label_spaces.values()],
            "text_encoder": model.config.text_encoder})
        store = FileStore(args.data_dir / "images")
        print(f"proposing for {len(ids)} new image(s) of project {name!r} with {checkpoint} (model version "
              f"{version_id})")
        bar = None
        if not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=len(ids), desc=f"prelabel {name}", unit="image", dynamic_ncols=True)
        proposed, taken, flagged, failed = 0, 0, 0, []
        start = time.perf_counter()
        for done, image_id in enumerate(ids, start=1):
            try:
                outcome = propose_one(sessions, store, predictor, request, image_id, version_id, class_set_id,
                                      args.user)
                proposed += outcome != "taken"
                taken += outcome == "taken"
                flagged += outcome == "unfamiliar"
            except (ImageError, OSError, InvalidInput) as err:  # one bad image: say so, go on
                failed.append(f"image {image_id}: {' '.join(str(err).split())}")
            if bar is not None:
                bar.update(1)
            if job is not None:
                job.progress(done / len(ids), f"image {done}/{len(ids)}: {proposed} proposed")
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - start
        said = (f"Proposed for {proposed} of {len(ids)} new image(s) of project {name!r} in {seconds:.1f} s"
                + (f"; {taken} were proposed or edited meanwhile by someone else" if taken else "")
                + (f"; {flagged} look unlike anything the model was trained on (their proposals start hidden "
                   "in the app)" if flagged else "")
                + (f"; {len(failed)} failed" if failed else "") + ".")
        print(said)
        for line in failed:
            print(f"warning: {line}", file=sys.stderr)
        if job is not None:
            job.done(said + "".join(f" {line}." for line in failed[:5]),
                     {"proposed": proposed, "images": len(ids), "taken": taken, "unfamiliar": flagged,
                      "failed": failed,
                      "model_version_id": version_id, "seconds": round(seconds, 1)})
        return 0
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    return run_as_job(parse_args(argv), run, "loading the model")


if __name__ == "__main__":
    sys.exit(main())
