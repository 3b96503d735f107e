"""`python -m train finetune`: fit the query set (LSQE) of a new label space, everything else frozen.

SPEC §3: a new space's LSQE starts as a similarity-weighted mix of the trained ones
(`RESIModel.add_label_space`) and is then fitted alone. Only Q x D numbers train, so the default
learning rate is far higher than in pretraining, and a frozen backbone and pixel decoder run without
a graph. The data come from a COCO instances file or from a project's accepted annotations.
When the base has a domain head, the new space then inherits the domain of the trained space whose
images its training images look like (`place_in_domain`), so domain-aware OMI holds it back on
other domains' images as it does the trained spaces.
With `--job-id` (the app's Fine-tune tab starts it so) the run reports its status and progress to that
row of the `jobs` table (train/jobs.py).

Shape legend: B images, Q queries, N masks, H x W image, L decoder layers, C mask-feature channels,
h x w = H/4 x W/4.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

from formats.images import decode_image
from formats.names import label_spaces_of
from formats.rle import decode_rles, encode_mask
from resi_core.data import CocoDataset, DatasetError, MixedSampler, TrainSample, class_names_match
from resi_core.labels import ADHOC_SPACE, ClassDef, LabelError, LabelSpace, normalize_name
from resi_core.model import (
    CheckpointError,
    RESICriterion,
    RESIModel,
    Target,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from resi_core.model.checkpoint import META_FILE
from resi_core.text import TextEncoderError, check_encoder_spec, get_text_encoder
from storage import db, repo
from storage.cli import DATA_DIR_ENV, DEFAULT_DATA_DIR
from storage.errors import InvalidInput, StorageError
from storage.files import FileStore, path_sha256
from train.domain import mean_domain_probs
from train.jobs import JobReporter
from train.pretrain import latest_checkpoint, pick_device


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train finetune",
        description="Fit the label-space query embeddings (LSQE) of a NEW label space on top of a trained RESI\n"
        "checkpoint. The new LSQE starts as a similarity-weighted mix of the trained ones; the backbone,\n"
        "decoders, classifier and every other LSQE stay frozen (bit-identical in the output).\n"
        "Data: a COCO instances file (--instances, --images) or a project's accepted annotations (--project).",
        epilog="Examples:\n"
        "  python -m train finetune --checkpoint runs/demo --space signs --instances signs.json "
        "--images signs/ --out runs/signs\n"
        "  python -m train finetune --checkpoint runs/demo --space hydrants --project Streets "
        "--out runs/hydrants --register --activate\n"
        "  (the app's Fine-tune tab runs this form with --job-id N and shows the job's progress)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="base RESI checkpoint folder (or a pretrain run folder: its `latest` is used); it "
                        "must use the text classifier and per-space queries")
    parser.add_argument("--space", required=True, help="name of the new label space")
    parser.add_argument("--continue", dest="refit", action="store_true",
                        help="--space is a trained space: refit its LSQE from its current values (the data "
                        "must have the same classes in the same order)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for the new checkpoint (model.safetensors, meta.json); it must not hold one")
    coco = parser.add_argument_group("data from a COCO instances file")
    coco.add_argument("--instances", type=Path, help="COCO instances JSON; its categories are the new classes")
    coco.add_argument("--images", type=Path, help="folder holding the images it names")
    coco.add_argument("--keep-empty-categories", action="store_true",
                      help="make categories that no annotation uses classes too (default: warn and leave them out)")
    project = parser.add_argument_group("data from a project's accepted annotations")
    project.add_argument("--project", help="project name; its ACCEPTED images are the training data")
    project.add_argument("--from-space", default=ADHOC_SPACE,
                         help="label space of the segments to learn (default %(default)s: classes typed by "
                         "annotators); the classes are their distinct names. Images without such segments "
                         "are skipped. Where two of an image's segments overlap, the later one loses the "
                         "overlapping pixels (a warning says how many images this touched)")
    project.add_argument("--data-dir", type=Path, default=Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DATA_DIR)),
                         help="data directory holding resi.db and images/ (default: $RESI_DATA_DIR or ./resi-data)")
    project.add_argument("--database-url", help="SQLAlchemy URL (default: $RESI_DATABASE_URL or DATA_DIR/resi.db)")
    project.add_argument("--register", action="store_true",
                         help="record the result as a model version of the project, child of the base "
                         "checkpoint's version (the base is registered too if it is not yet)")
    project.add_argument("--activate", action="store_true", help="with --register: make it the active model")
    project.add_argument("--job-id", type=int,
                         help="report to this row of the jobs table (the app passes it): the job is marked "
                         "running with this process id, gets its progress (share of the iterations, loss) "
                         "about once a second, and ends done with its result (checkpoint folder, model "
                         "version id) or failed with the one-line error")
    train = parser.add_argument_group("training")
    train.add_argument("--iterations", type=int, default=300, help="optimizer steps (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=4, help="images per step (default %(default)s)")
    train.add_argument("--lr", type=float, default=1e-2,
                       help="AdamW learning rate, cosine-decayed to 0 (default %(default)s)")
    train.add_argument("--no-augment", action="store_true", help="no random scale, crop and flip")
    train.add_argument("--seed", type=int, default=0, help="seed of sampling and augmentation")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.instances is None) == (args.project is None):
        parser.error("give exactly one data source: --instances with --images, or --project")
    if args.instances is not None and args.images is None:
        parser.error("--instances needs --images")
    if args.register and args.project is None:
        parser.error("--register needs --project")
    if args.activate and not args.register:
        parser.error("--activate needs --register")
    if args.job_id is not None and (args.project is None or args.job_id < 1):
        parser.error("--job-id needs --project and a positive job id")
    if args.iterations < 1 or args.batch_size < 1 or args.lr <= 0:
        parser.error("--iterations and --batch-size must be at least 1 and --lr positive")
    return args


DOMAIN_IMAGES = 200  # training images the domain head reads to place a new space in a domain
MIN_DOMAIN_PROBABILITY = 0.5  # the likeliest domain's mean probability needed to inherit it


# ----- data from storage -------------------------------------------------------------------------


class AcceptedDataset:
    """Accepted images with their segments of one storage label space, read like a CocoDataset."""

    def __init__(self, name: str, images: list[repo.AcceptedImage], from_space: str, store: FileStore):
        self.name = name
        self.store = store
        chosen = [(im, [s for s in im.segments if from_space in label_spaces_of(s.label_space)]) for im in images]
        chosen = [(im, segs) for im, segs in chosen if segs]
        classes: dict[str, ClassDef] = {}
        for _, segs in chosen:
            for s in segs:
                classes.setdefault(normalize_name(s.class_name), ClassDef(s.class_name, s.isthing))
        if not classes:
            found = sorted({s.label_space for im in images for s in im.segments})
            raise DatasetError(
                f"None of the {len(images)} accepted images has segments of label space {from_space!r} "
                f"(their segments are of {found or 'no space'}); choose one with --from-space."
            )
        self.label_space = LabelSpace(name, tuple(classes[key] for key in sorted(classes)))
        self.images = [im for im, _ in chosen]
        self.masks: list[list[dict]] = []  # per image: non-overlapping RLEs, in segment order
        self.labels: list[np.ndarray] = []
        self.overlapping_images = 0
        for im, segs in chosen:
            masks = decode_rles([s.rle for s in segs], im.height, im.width)  # [N, H, W]
            taken = np.zeros((im.height, im.width), dtype=bool)
            overlap = False
            for mask in masks:  # views: a later mask loses the pixels earlier ones hold
                overlap |= bool((mask & taken).any())
                mask &= ~taken
                taken |= mask
            self.overlapping_images += overlap
            keep = masks.any(axis=(1, 2))  # [N]
            self.masks.append([encode_mask(m) for m in masks[keep]])
            labels = [self.label_space.index(s.class_name) for s, kept in zip(segs, keep, strict=True) if kept]
            self.labels.append(np.array(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.images)

    def image(self, index: int) -> np.ndarray:
        """The RGB uint8 image alone (no masks decoded), checked against its recorded size."""
        info = self.images[index]
        image = decode_image(self.store.read(info.sha256))
        if image.shape[:2] != (info.height, info.width):
            raise DatasetError(f"Image {info.image_id} ({info.original_name}) is not {info.height}x{info.width}.")
        return image

    def __getitem__(self, index: int) -> TrainSample:
        info = self.images[index]
        image = self.image(index)
        masks = decode_rles(self.masks[index], info.height, info.width)  # [N, H, W]
        return TrainSample(image=image, masks=masks, labels=self.labels[index], space=self.name)


# ----- sources, base checkpoint and database ---------------------------------------------------


@dataclass
class Source:
    """The new space's training data and what the checkpoint records about where it came from."""

    dataset: CocoDataset | AcceptedDataset
    info: dict[str, Any]


def coco_source(args: argparse.Namespace) -> Source:
    try:
        dataset = CocoDataset(args.space, args.images, args.instances, keep_empty=args.keep_empty_categories)
    except LabelError as err:  # its categories are the new space's classes
        raise DatasetError(f"{args.instances}: its categories make no valid label space: {err}") from None
    if not any(dataset.annotations):
        raise DatasetError(f"{args.instances} has no annotations of its categories {dataset.label_space.class_names}.")
    if dataset.empty_categories:
        print(f"warning: {args.instances}: categories without annotations "
              + ", ".join(repr(n) for n in dataset.empty_categories)
              + (" are kept as classes (--keep-empty-categories)" if args.keep_empty_categories else
                 " are not made classes (pass --keep-empty-categories to keep them)"), file=sys.stderr)
    info = {"kind": "coco", "instances": str(args.instances.resolve()), "images": str(args.images.resolve())}
    return Source(dataset, info)


def open_database(args: argparse.Namespace) -> Engine:
    """The project database's engine, refusing a missing file or an out-of-date schema (nothing is created)."""

    url = args.database_url or db.database_url(args.data_dir)
    try:
        path = db.sqlite_path(url)
    except ArgumentError as err:
        raise InvalidInput(f"{url!r} is not a database URL: {err}") from None
    if path is not None and not path.is_file():
        raise InvalidInput(f"There is no database at {path}; pass --data-dir or --database-url.")
    engine = db.make_engine(url)
    try:
        db.verify_database(engine)
        if db.current_revision(engine) != db.head_revision():
            raise InvalidInput("The database schema is out of date: run `python -m train db upgrade` first.")
    except InvalidInput:
        engine.dispose()
        raise
    return engine


def project_source(args: argparse.Namespace, sessions: sessionmaker[Session]) -> tuple[Source, int]:
    with sessions() as session:
        project = repo.get_project_by_name(session, args.project)
        accepted = repo.accepted_annotations(session, project.id)
    if not accepted:
        raise DatasetError(f"Project {project.name!r} has no accepted images yet: accept some annotations first.")
    dataset = AcceptedDataset(args.space, accepted, args.from_space, FileStore(args.data_dir / "images"))
    if dataset.overlapping_images:
        print(f"warning: in {dataset.overlapping_images} of {len(dataset)} images, segments of "
              f"{args.from_space!r} overlap; later segments lost the overlapping pixels.", file=sys.stderr)
    info = {"kind": "project", "project": project.name, "project_id": project.id, "from_space": args.from_space,
            "image_ids": [im.image_id for im in dataset.images]}
    return Source(dataset, info), project.id


def check_base(base: Path, meta: dict[str, Any], space: str, refit: bool) -> None:
    """Errors that need only the base checkpoint's metadata, raised before any data or weights load."""
    config = meta.get("config") or {}
    if config.get("classifier") != "text" or config.get("query_mode") != "per_space":
        raise CheckpointError(
            f"{base} uses the {config.get('classifier')!r} classifier with {config.get('query_mode')!r} queries; "
            "fitting an LSQE needs the text classifier and per-space queries (method 'resi')."
        )
    spec = str(config.get("text_encoder") or meta.get("text_encoder"))
    try:  # the checkpoint's own file names the encoder: nothing may be downloaded or unpickled for it
        check_encoder_spec(spec)
    except TextEncoderError as err:
        raise CheckpointError(f"{base / META_FILE} names the text encoder {spec!r}, which cannot be used: {err}"
                              ) from None
    trained = [s["name"] for s in meta["label_spaces"]]
    if space in trained and not refit:
        raise ValueError(f"{base} already has a label space {space!r}; pick a new --space name, or pass "
                         "--continue to refit its LSQE.")
    if refit and space not in trained:
        raise ValueError(f"--continue: {base} has no label space {space!r} to refit; trained: {trained}.")


def prepare_model(base: Path, space: LabelSpace, refit: bool) -> tuple[RESIModel, dict[str, float] | None]:
    """The base model with `space` added (returns the init weights per trained space), or refit as is."""
    model = load_checkpoint(base)
    if refit:
        if not class_names_match(model.label_spaces[space.name], space):
            raise DatasetError(
                f"--continue: the data's classes {space.class_names} differ from those of label space "
                f"{space.name!r}, {model.label_spaces[space.name].class_names} (same names, same order needed)."
            )
        return model, None
    return model, model.add_label_space(space, get_text_encoder(model.config.text_encoder))


# ----- training and registration ---------------------------------------------------------------


def fit(model: RESIModel, sampler: MixedSampler, args: argparse.Namespace, device: torch.device,
        on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Optimize only the LSQE of `args.space`; returns the loss of every iteration.

    `on_step(iterations done, loss)` runs after each step (the job's progress)."""
    model.to(device).eval()  # eval: frozen includes normalization statistics
    params = model.freeze_all_but(args.space)
    criterion = RESICriterion(model).to(device)
    # No weight decay: it would pull the queries toward zero rather than keep them near their init.
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iterations)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=args.iterations, desc=f"finetune {args.space}", unit="it", dynamic_ncols=True)
    losses: list[float] = []
    for _ in range(args.iterations):
        batch = sampler.batch(args.batch_size)
        targets = [Target(t.space, t.masks.to(device), t.labels.to(device)) for t in batch.targets]
        with torch.no_grad():  # the frozen backbone and pixel decoder need no graph
            features = model.encode(batch.pixel_values.to(device))  # mask_features [B, C, h, w]
        output = model.decode(features, batch.spaces)  # masks_queries_logits [L+1, B, Q, h, w]
        loss = criterion(model, output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.total.item())
        if on_step is not None:
            on_step(len(losses), losses[-1])
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    return losses


def place_in_domain(model: RESIModel, dataset: CocoDataset | AcceptedDataset, space: str
                    ) -> tuple[dict[str, Any], str]:
    """Let `space` inherit the domain of the trained space whose images its training images look like.

    The domain head's mean probability per domain over (up to DOMAIN_IMAGES of) the training images
    decides: the likeliest domain is recorded in `model.space_domains` if its mean is at least
    MIN_DOMAIN_PROBABILITY, else none is (a refit drops an earlier one). The predictor then holds the
    space back on images of other domains (docs/MODEL.md, "Domain-aware OMI"). Returns the figures for
    the training info and what to say about it.
    """
    if model.domain_head is None:
        return ({"domain": None, "skipped": "the base checkpoint has no domain head"},
                "the base checkpoint has no domain head; never held back")
    if space in model.domain_spaces:
        return ({"domain": space, "skipped": "the domain head knows this space"},
                f"{space!r} has a domain of its own in the domain head; unchanged")
    probs, count = mean_domain_probs(model, dataset, DOMAIN_IMAGES)
    best = max(probs, key=probs.__getitem__)
    domain = best if probs[best] >= MIN_DOMAIN_PROBABILITY else None
    model.set_space_domain(space, domain)
    info = {"domain": domain, "best": best, "probability": round(probs[best], 4),
            "mean_probs": {name: round(p, 4) for name, p in probs.items()}, "images": count,
            "min_probability": MIN_DOMAIN_PROBABILITY}
    if domain is not None:
        return info, f"looks like {best}'s images ({probs[best]:.2f}); held back on other domains' images"
    return info, f"no trained domain fits (best {best} {probs[best]:.2f}); never held back"


def register(sessions: sessionmaker[Session], project_id: int, base: Path, base_meta: dict[str, Any], out: Path, model: RESIModel,
             training: dict[str, Any], activate: bool) -> tuple[int, int]:
    """Register `out` as a model version whose parent is the base's version (registered here if new).

    Versions are found by checkpoint hash, as the app finds the version of the checkpoint it loaded.
    """
    base_sha, out_sha = path_sha256(base), path_sha256(out)
    with sessions.begin() as session:
        parent = repo.ensure_model_version(session, project_id, f"{base.name}-{base_sha[:8]}", str(base.resolve()),
                                           base_sha, base_meta["label_spaces"],
                                           {"text_encoder": base_meta["text_encoder"]})
        version = repo.register_model_version(
            session, project_id, f"{out.name}-{out_sha[:8]}", str(out.resolve()), out_sha,
            [s.to_json() for s in model.label_spaces.values()], training, parent_id=parent.id, active=activate,
        )
        return parent.id, version.id


def open_job(args: argparse.Namespace) -> tuple[JobReporter, Engine]:
    """The reporter of `--job-id`, on its own engine; the job must belong to `--project`."""
    engine = open_database(args)
    try:
        sessions = db.make_session_factory(engine)
        with sessions() as session:
            project_id = repo.get_project_by_name(session, args.project).id
        return JobReporter(sessions, args.job_id, project_id), engine
    except BaseException:
        engine.dispose()
        raise


def run(args: argparse.Namespace, job: JobReporter | None = None) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    base = latest_checkpoint(args.checkpoint) or args.checkpoint
    base_meta = read_meta(base)
    check_base(base, base_meta, args.space, args.refit)
    if (args.out / META_FILE).exists():
        raise ValueError(f"{args.out} holds a checkpoint already; choose another --out.")
    engine = open_database(args) if args.project is not None else None
    try:
        sessions = db.make_session_factory(engine) if engine is not None else None
        source, project_id = project_source(args, sessions) if sessions is not None else (coco_source(args), None)
        space = source.dataset.label_space
        print(f"label space {space.name!r}: {len(space.classes)} classes {space.class_names}, "
              f"{len(source.dataset)} images")
        model, weights = prepare_model(base, space, args.refit)
        if weights is None:
            print(f"refitting the LSQE of {space.name!r} from its current values")
        else:
            mix = ", ".join(f"{name} {w:.3f}" for name, w in sorted(weights.items(), key=lambda kv: -kv[1]))
            print(f"LSQE of {space.name!r} initialized as a mix of: {mix}")

        torch.manual_seed(args.seed)  # the criterion's sampled points
        sampler = MixedSampler([source.dataset], size=model.config.max_size, seed=args.seed,
                               augment_data=not args.no_augment)
        start = time.perf_counter()
        losses = fit(model, sampler, args, device, None if job is None else job.iteration_callback(args.iterations))
        fit_seconds = time.perf_counter() - start
        domain_info, domain_says = place_in_domain(model, source.dataset, space.name)
        print(f"domain: {domain_says}")
        window = max(1, len(losses) // 10)
        first, final = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
        info = {
            "base_checkpoint": str(base.resolve()),
            "space": space.name,
            "classes": space.class_names,
            "continued": args.refit,
            "init_weights": weights,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "augment": not args.no_augment,
            "n_images": len(source.dataset),
            "source": source.info,
            "loss_first": round(first, 5),
            "loss_final": round(final, 5),
            "iterations_per_second": round(len(losses) / max(fit_seconds, 1e-9), 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "domain": domain_info,
            "base_training": base_meta.get("training", {}),
        }
        save_checkpoint(args.out, model, {"finetune": info})
        print(f"loss {first:.4f} -> final {final:.4f} (mean of the first / last {window} iterations); "
              f"checkpoint saved to {args.out}")
        parent_id = version_id = None
        if args.register:
            training = {"text_encoder": model.config.text_encoder, "finetune": info}
            try:
                parent_id, version_id = register(sessions, project_id, base, base_meta, args.out, model, training,
                                                 args.activate)
            except StorageError as err:
                raise InvalidInput(f"{err} (the checkpoint is saved in {args.out}; it was not registered)") from None
            print(f"registered model version {version_id} (parent {parent_id}){', now active' if args.activate else ''}")
        if job is not None:
            made = f"model version {version_id}" if version_id is not None else f"checkpoint {args.out.resolve()}"
            job.done(
                f"Label space {space.name!r} ({len(space.classes)} classes) learned: {made}"
                f"{', now active' if args.activate else ''}. Loss {first:.3f} -> {final:.3f}. Domain: {domain_says}.",
                {"checkpoint": str(args.out.resolve()), "model_version_id": version_id,
                 "parent_model_version_id": parent_id, "active": bool(args.activate), "space": space.name,
                 "classes": space.class_names, "loss_first": info["loss_first"], "loss_final": info["loss_final"],
                 "domain": domain_info["domain"]},
            )
        return 0
    finally:
        if engine is not None:
            engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    job = job_engine = None
    try:
        if args.job_id is not None:
            job, job_engine = open_job(args)
            job.start("loading the data and the model")
        return run(args, job)
    except (ValueError, OSError, StorageError) as err:  # checkpoint, dataset, storage, device, image errors
        message = str(err).replace("\n", " ")
        print("error: " + message, file=sys.stderr)
        if job is not None:
            job.failed(message)
        return 2
    except BaseException as err:  # a crash: the job must not stay "running"
        if job is not None:
            job.failed(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        raise
    finally:
        if job_engine is not None:
            job_engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
