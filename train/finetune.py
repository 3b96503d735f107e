"""`python -m train finetune`: make a label space better from annotated images, and keep it only if it is.

SPEC §3: a new space's LSQE starts as a similarity-weighted mix of the trained ones
(`RESIModel.add_label_space`). Then `--scope` says what trains (train/tuning.py): the query set alone
(`lsqe`, the paper's route for a new label space), also the transformer decoder and classifier
(`decoder`), or every weight (`all`). The data come from a COCO instances file or from a project's
accepted annotations, split deterministically into training and held-out images (train/holdout.py);
PIQ, PQ, mIoU, AP and overlap recall on the held-out images are measured before and after.
With a project, the result is recorded as a model version with those figures, and it becomes the
project's active model only if held-out PIQ did not drop (`--force` makes it active anyway).
`--when-new N` turns the command into a periodic one-shot (cron) that does nothing until N images
were accepted since the project's last fine-tuned version.
When the base has a domain head, the new space then inherits the domain of the trained space whose
images its training images look like (`place_in_domain`), so domain-aware OMI holds it back on
other domains' images as it does the trained spaces.
With `--job-id` (the app's Fine-tune tab starts it so) the run reports its status and progress to that
row of the `jobs` table (train/jobs.py).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from formats.images import decode_image
from formats.names import label_spaces_of, path_safe
from formats.rle import decode_rles, encode_mask
from resi_core.data import CocoDataset, DatasetError, MixedSampler, TrainSample, class_names_match
from resi_core.labels import ADHOC_SPACE, ClassDef, LabelError, LabelSpace, normalize_name
from resi_core.model import CheckpointError, RESIModel, load_checkpoint, read_meta, save_checkpoint
from resi_core.model.checkpoint import META_FILE
from resi_core.text import TextEncoderError, check_encoder_spec, get_text_encoder
from storage import repo
from storage.db import make_session_factory
from storage.errors import InvalidInput, StorageError
from storage.files import FileStore, path_sha256
from storage.models import ImageStatus
from train.database import add_database_arguments, open_database
from train.domain import mean_domain_probs
from train.holdout import (
    HOLDOUT_FRACTION,
    HeldOutImage,
    Subset,
    TruthMask,
    evaluate_holdout,
    split_holdout,
)
from train.jobs import JobReporter, run_as_job
from train.pretrain import latest_checkpoint, pick_device
from train.threads import use_threads
from train.tuning import CACHED_SCOPES, SCOPES, FeatureCache, FitSettings, fit

EXAMPLES = """\
Examples:
  python -m train finetune --checkpoint checkpoints/demo --space signs --instances signs.json \\
      --images signs/ --out runs/signs
  python -m train finetune --project Streets --space hydrants --scope lsqe
      (a new label space from the ad-hoc classes of the project's accepted images; the base is the
      project's active model; the result is a model version, active if held-out PIQ did not drop)
  python -m train finetune --project Streets --scope decoder
      (again, for the label space of the project's last fine-tuned version, from its active model)
  python -m train finetune --project Streets --when-new 20
      (periodic: nothing until 20 images were accepted since the last fine-tuned version; for cron:
      */30 * * * * cd /srv/resi && .venv/bin/python -m train finetune --project Streets --when-new 20 \\
          --no-progress >> resi-data/finetune-cron.log 2>&1)
  (the app's Fine-tune tab runs the project form with --job-id N and shows the job's progress)
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m train finetune",
        description="Fit a label space on top of a trained RESI checkpoint: a NEW space (its query embeddings,\n"
        "LSQE, start as a similarity-weighted mix of the trained ones) or, with --continue, a trained one.\n"
        "--scope says what trains: the space's LSQE only (lsqe; backbone and pixel-decoder outputs are\n"
        "cached per image, so it is fast), also the transformer decoder and classifier (decoder), or every\n"
        "weight (all). Held-out images measure PIQ, PQ, mIoU, AP and overlap recall before and after.\n"
        "Data: a COCO instances file (--instances, --images) or a project's accepted annotations (--project);\n"
        "with --project the result is a model version of the project, made active only if held-out PIQ\n"
        "did not drop (--force: always).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", type=Path,
                        help="base RESI checkpoint folder (or a pretrain run folder: its `latest` is used); it "
                        "must use the text classifier and per-space queries. Default with --project: the "
                        "project's active model")
    parser.add_argument("--space",
                        help="the label space to learn. Default with --project: the space of the project's last "
                        "fine-tuned version (refitted when the base has it, with that version's --from-space)")
    parser.add_argument("--continue", dest="refit", action="store_true",
                        help="--space is a trained space: refit it from its current weights (the data must have "
                        "the same classes in the same order)")
    parser.add_argument("--scope", choices=SCOPES, default="lsqe",
                        help="what trains: lsqe = the space's query set only; decoder = also the transformer "
                        "decoder and classifier (shared by every label space); all = every weight "
                        "(default %(default)s)")
    parser.add_argument("--out", type=Path,
                        help="folder for the new checkpoint (model.safetensors, meta.json); it must not hold one. "
                        "Default with --project: DATA_DIR/models/SPACE-TIMESTAMP")
    coco = parser.add_argument_group("data from a COCO instances file")
    coco.add_argument("--instances", type=Path, help="COCO instances JSON; its categories are the space's classes")
    coco.add_argument("--images", type=Path, help="folder holding the images it names")
    coco.add_argument("--keep-empty-categories", action="store_true",
                      help="make categories that no annotation uses classes too (default: warn and leave them out)")
    project = parser.add_argument_group("data from a project's accepted annotations")
    project.add_argument("--project", help="project name; its ACCEPTED images are the data")
    project.add_argument("--from-space",
                         help=f"label space of the segments to learn besides the space's own (default "
                         f"{ADHOC_SPACE}: classes typed by annotators); the classes are their distinct names. "
                         "Images without such segments are skipped. Where two of an image's segments overlap, "
                         "the later one loses the overlapping pixels (a warning says how many images this touched)")
    add_database_arguments(project)
    project.add_argument("--force", action="store_true",
                         help="make the new version active even if held-out PIQ dropped (or was not measured)")
    project.add_argument("--when-new", type=int, metavar="N",
                         help="periodic use: do nothing (exit 0, and say so) until N images were accepted since "
                         "the project's last fine-tuned version (images it did not see); then fine-tune")
    project.add_argument("--job-id", type=int,
                         help="report to this row of the jobs table (the app passes it): the job is marked "
                         "running with this process id, gets its progress about once a second, and ends done "
                         "with its result (checkpoint folder, model version id, held-out figures, whether it "
                         "is active) or failed with the one-line error")
    train = parser.add_argument_group("training")
    train.add_argument("--holdout", type=float, default=HOLDOUT_FRACTION,
                       help="share of the images held out to measure the result, chosen by image hash so an "
                       "image keeps its side as images are added; at least one is held out (default "
                       "%(default)s; 0: none, and then a project's new version is not made active without --force)")
    train.add_argument("--iterations", type=int, default=300, help="optimizer steps (default %(default)s)")
    train.add_argument("--batch-size", type=int, default=4, help="images per step (default %(default)s)")
    train.add_argument("--lr", type=float, default=5e-2,
                       help="AdamW learning rate of the query set, cosine-decayed to 0 (default %(default)s)")
    train.add_argument("--lr-shared", type=float, default=1e-3,
                       help="learning rate of the shared weights that --scope decoder or all trains "
                       "(default %(default)s)")
    train.add_argument("--no-augment", action="store_true",
                       help="--scope all: no random scale, crop and flip (lsqe and decoder train on each image "
                       "and its mirror image, cached)")
    train.add_argument("--seed", type=int, default=0, help="seed of sampling and augmentation")
    train.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    train.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if (args.instances is None) == (args.project is None):
        parser.error("give exactly one data source: --instances with --images, or --project")
    if args.instances is not None:
        if args.images is None:
            parser.error("--instances needs --images")
        missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--space", args.space),
                                            ("--out", args.out)) if value is None]
        if missing:
            parser.error(f"--instances needs {', '.join(missing)}")
        for flag, value in (("--from-space", args.from_space), ("--force", args.force or None),
                            ("--when-new", args.when_new)):
            if value is not None:
                parser.error(f"{flag} needs --project")
    if args.job_id is not None and (args.project is None or args.job_id < 1):
        parser.error("--job-id needs --project and a positive job id")
    if args.when_new is not None and args.when_new < 1:
        parser.error("--when-new needs a positive number of images")
    if args.iterations < 1 or args.batch_size < 1 or args.lr <= 0 or args.lr_shared <= 0:
        parser.error("--iterations and --batch-size must be at least 1, --lr and --lr-shared positive")
    if not 0.0 <= args.holdout < 1.0:
        parser.error("--holdout must be at least 0 and below 1")
    return args


DOMAIN_IMAGES = 200  # training images the domain head reads to place a new space in a domain
MIN_DOMAIN_PROBABILITY = 0.5  # the likeliest domain's mean probability needed to inherit it


# ----- data from storage -------------------------------------------------------------------------


class AcceptedDataset:
    """Accepted images with their segments of some storage label spaces (`sources`), read like a
    CocoDataset whose label space is `name`."""

    def __init__(self, name: str, images: list[repo.AcceptedImage], sources: str | set[str], store: FileStore,
                 trained: LabelSpace | None = None):
        """`trained`: the space's classes when it exists already (a refit), in its order; else the
        classes are the segments' distinct names, sorted."""
        self.name = name
        self.store = store
        wanted = {sources} if isinstance(sources, str) else set(sources)
        chosen = [(im, [s for s in im.segments if wanted & set(label_spaces_of(s.label_space))]) for im in images]
        chosen = [(im, segs) for im, segs in chosen if segs]
        classes: dict[str, ClassDef] = {}
        for _, segs in chosen:
            for s in segs:
                classes.setdefault(normalize_name(s.class_name), ClassDef(s.class_name, s.isthing))
        if not classes:
            found = sorted({s.label_space for im in images for s in im.segments})
            raise DatasetError(
                f"None of the {len(images)} accepted images has segments of label space "
                f"{' or '.join(map(repr, sorted(wanted)))} (their segments are of {found or 'no space'}); "
                "choose one with --from-space."
            )
        if trained is None:
            self.label_space = LabelSpace(name, tuple(classes[key] for key in sorted(classes)))
        else:
            unknown = sorted(classes[k].name for k in classes if k not in map(normalize_name, trained.class_names))
            if unknown:
                raise DatasetError(f"--continue: the accepted segments have classes {unknown} that label space "
                                   f"{name!r} lacks (it has {trained.class_names}); a refit keeps its classes.")
            self.label_space = LabelSpace(name, trained.classes)
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
    """The space's data, how to split it, and what the checkpoint records about where it came from.

    keys: a SHA-256 hex digest per image (train/holdout.py splits on it); truth(i, spaces) the
    held-out image i's ground truth for a request of `spaces` (the learned space first); others: the
    trained label spaces whose accepted segments a held-out image may carry (evaluated too)."""

    dataset: CocoDataset | AcceptedDataset
    info: dict[str, Any]
    keys: list[str]
    others: set[str]
    synonyms: tuple[tuple[str, str], ...] = ()

    def truth(self, index: int, spaces: tuple[str, ...], model: RESIModel) -> tuple[TruthMask, ...]:
        space = self.dataset.name
        sample_masks = (self.dataset.masks[index] if isinstance(self.dataset, AcceptedDataset)
                        else [a.rle for a in self.dataset.annotations[index]])
        labels = (self.dataset.labels[index] if isinstance(self.dataset, AcceptedDataset)
                  else [self.dataset.category_to_class[a.category_id] for a in self.dataset.annotations[index]])
        names = self.dataset.label_space.class_names
        truth = [TruthMask(space, names[int(label)], rle) for rle, label in zip(sample_masks, labels, strict=True)]
        if isinstance(self.dataset, AcceptedDataset):
            learned = {self.info["from_space"], space}
            for seg in self.dataset.images[index].segments:
                parts = label_spaces_of(seg.label_space)
                if learned & set(parts):
                    continue
                other = next((s for s in parts if s in spaces and s in model.label_spaces
                              and normalize_name(seg.class_name) in
                              {normalize_name(n) for n in model.label_spaces[s].class_names}), None)
                if other is not None:
                    truth.append(TruthMask(other, seg.class_name, seg.rle))
        return tuple(truth)


def coco_source(args: argparse.Namespace, space: str) -> Source:
    try:
        dataset = CocoDataset(space, args.images, args.instances, keep_empty=args.keep_empty_categories)
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
    keys = [hashlib.sha256(im.file_name.encode()).hexdigest() for im in dataset.images]
    return Source(dataset, info, keys, set())


@dataclass(frozen=True)
class ProjectPlan:
    """What a project run learns, from what, and where it goes (flags, else the project's history)."""

    project_id: int
    name: str
    base: Path
    space: str
    from_space: str
    refit: bool
    out: Path
    last_version_id: int | None


def _last_finetuned(session: Session, project_id: int) -> repo.ModelVersion | None:
    versions = [v for v in repo.list_model_versions(session, project_id) if "finetune" in (v.training or {})]
    return versions[-1] if versions else None


def accepted_since(session: Session, project_id: int, version: Any) -> int:
    """Accepted images of the project that `version` (a fine-tuned model version, or None) did not see."""
    accepted = set(repo.image_ids(session, project_id, [ImageStatus.ACCEPTED]))
    if version is None:
        return len(accepted)
    source = version.training["finetune"].get("source", {})
    seen = set(source.get("accepted_image_ids", source.get("image_ids", [])))
    return len(accepted - seen)


def default_out(data_dir: Path, space: str) -> Path:
    models = data_dir.resolve() / "models"
    stem = f"{path_safe(space)}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = models / stem, 2
    while out.exists():
        out, n = models / f"{stem}-{n}", n + 1
    return out


def plan_project(args: argparse.Namespace, sessions: sessionmaker[Session]) -> ProjectPlan | str:
    """The run's plan, or (with --when-new) the sentence that says why there is nothing to do."""
    with sessions() as session:
        project = repo.get_project_by_name(session, args.project)
        last = _last_finetuned(session, project.id)
        if args.when_new is not None:
            new = accepted_since(session, project.id, last)
            since = f"since model version {last.id}" if last is not None else "(no fine-tuned version yet)"
            if new < args.when_new:
                return (f"Nothing to do: {new} image(s) accepted {since} in project {project.name!r}; "
                        f"fine-tuning starts at {args.when_new}.")
            print(f"{new} image(s) accepted {since}: fine-tuning.")
        active = repo.active_model_version(session, project.id)
        base = args.checkpoint
        if base is None:
            if active is None:
                raise InvalidInput(f"Project {project.name!r} has no active model yet: pass --checkpoint "
                                   "(e.g. checkpoints/demo).")
            base = Path(active.checkpoint_path)
        space, from_space = args.space, args.from_space
        if space is None:
            if last is None:
                raise InvalidInput(f"Project {project.name!r} has no fine-tuned version to continue: name the "
                                   "label space to learn with --space.")
            space = last.training["finetune"]["space"]
            from_space = from_space or last.training["finetune"].get("source", {}).get("from_space")
        refit = args.refit or (args.space is None and space in [s["name"] for s in read_meta(
            latest_checkpoint(base) or base)["label_spaces"]])
        return ProjectPlan(project.id, project.name, base, space, from_space or ADHOC_SPACE, refit,
                           args.out or default_out(args.data_dir, space), None if last is None else last.id)


def project_source(plan: ProjectPlan, sessions: sessionmaker[Session], data_dir: Path,
                   trained: LabelSpace | None) -> Source:
    with sessions() as session:
        accepted = repo.accepted_annotations(session, plan.project_id)
        class_set = repo.current_class_set(session, plan.project_id)
        synonyms = tuple(tuple(pair) for pair in class_set.synonyms) if class_set is not None else ()
    if not accepted:
        raise DatasetError(f"Project {plan.name!r} has no accepted images yet: accept some annotations first.")
    dataset = AcceptedDataset(plan.space, accepted, {plan.from_space, plan.space}, FileStore(data_dir / "images"),
                              trained)
    if dataset.overlapping_images:
        print(f"warning: in {dataset.overlapping_images} of {len(dataset)} images, segments of "
              f"{plan.from_space!r} overlap; later segments lost the overlapping pixels.", file=sys.stderr)
    info = {"kind": "project", "project": plan.name, "project_id": plan.project_id, "from_space": plan.from_space,
            "image_ids": [im.image_id for im in dataset.images],
            "accepted_image_ids": [im.image_id for im in accepted]}
    others = {space for im in dataset.images for s in im.segments for space in label_spaces_of(s.label_space)}
    return Source(dataset, info, [im.sha256 for im in dataset.images], others, synonyms)  # type: ignore[arg-type]


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
                         "--continue to refit it.")
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


# ----- domain, registration, the verdict -----------------------------------------------------------


def place_in_domain(model: RESIModel, dataset: Any, space: str) -> tuple[dict[str, Any], str]:
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


def register(sessions: sessionmaker[Session], project_id: int, base: Path, base_meta: dict[str, Any], out: Path,
             model: RESIModel, training: dict[str, Any], activate: bool) -> tuple[int, int, int | None]:
    """Register `out` as a model version whose parent is the base's version (registered here if new);
    returns (parent id, new version id, the id of the version active after this).

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
        active = repo.active_model_version(session, project_id)
        return parent.id, version.id, None if active is None else active.id


def verdict(before: dict[str, Any] | None, after: dict[str, Any] | None, force: bool) -> tuple[bool, str]:
    """(activate?, why) by the rule: active only if held-out PIQ did not drop, or with --force."""
    piq_before = None if before is None else before.get("piq")
    piq_after = None if after is None else after.get("piq")
    if piq_before is None or piq_after is None:
        measured = "held-out PIQ was not measured (no held-out image, or no class on them)"
        return force, f"{measured}; made active because of --force" if force else measured
    change = f"held-out PIQ {piq_before:.1f} -> {piq_after:.1f}"
    if piq_after >= piq_before:
        return True, f"{change} did not drop"
    return force, f"{change} dropped; made active because of --force" if force else f"{change} dropped"


def figures(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return "not measured"
    parts = [f"{name} {'-' if metrics[key] is None else f'{metrics[key]:.1f}'}"
             for name, key in (("PIQ", "piq"), ("PQ", "pq"), ("mIoU", "miou"), ("AP", "ap"),
                               ("overlap recall", "overlap_recall"))]
    return ", ".join(parts)


# ----- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, job: JobReporter | None = None) -> int:
    started = time.perf_counter()
    use_threads(args.threads)
    device = pick_device(args.device)
    engine = open_database(args) if args.project is not None else None
    try:
        sessions = make_session_factory(engine) if engine is not None else None
        plan = None
        if sessions is not None:
            planned = plan_project(args, sessions)
            if isinstance(planned, str):
                print(planned)
                if job is not None:
                    job.done(planned, {"skipped": True})
                return 0
            plan = planned
        checkpoint = plan.base if plan is not None else args.checkpoint
        space_name = plan.space if plan is not None else args.space
        refit = plan.refit if plan is not None else args.refit
        out = plan.out if plan is not None else args.out
        base = latest_checkpoint(checkpoint) or checkpoint
        base_meta = read_meta(base)
        check_base(base, base_meta, space_name, refit)
        if (out / META_FILE).exists():
            raise ValueError(f"{out} holds a checkpoint already; choose another --out.")
        trained = next((LabelSpace.from_json(s) for s in base_meta["label_spaces"] if s["name"] == space_name), None)
        source = (project_source(plan, sessions, args.data_dir, trained if refit else None)  # type: ignore[arg-type]
                  if plan is not None else coco_source(args, space_name))
        space = source.dataset.label_space
        held = split_holdout(source.keys, args.holdout)
        train_set = Subset(source.dataset, [i for i, h in enumerate(held) if not h])
        holdout_ids = [i for i, h in enumerate(held) if h]
        print(f"label space {space.name!r}: {len(space.classes)} classes {space.class_names}, "
              f"{len(source.dataset)} images: {len(train_set)} to train on, {len(holdout_ids)} held out")
        model, weights = prepare_model(base, space, refit)
        if weights is None:
            print(f"refitting {space.name!r} from its current weights (scope {args.scope})")
        else:
            mix = ", ".join(f"{name} {w:.3f}" for name, w in sorted(weights.items(), key=lambda kv: -kv[1]))
            print(f"LSQE of {space.name!r} initialized as a mix of: {mix}")
        model.to(device).eval()

        eval_spaces = (space.name, *sorted(s for s in source.others if s != space.name and s in model.label_spaces))
        holdout = [HeldOutImage(source.dataset.images[i].height, source.dataset.images[i].width,
                                lambda i=i: source.dataset.image(i), source.truth(i, eval_spaces, model))
                   for i in holdout_ids]

        def measure(when: str) -> dict[str, Any] | None:
            if not holdout:
                return None
            if job is not None:
                job.progress(0.0 if when == "before" else 1.0, f"measuring the held-out images ({when})", force=True)
            return evaluate_holdout(model, holdout, eval_spaces, source.synonyms, device)

        # The domain first, so that domain-aware OMI treats the space alike before and after (the pixel
        # features it reads change only with --scope all, which places it again after training).
        domain_info, domain_says = place_in_domain(model, train_set, space.name)
        timings: dict[str, float] = {}
        tick = time.perf_counter()
        before = measure("before")
        timings["evaluate_before"] = time.perf_counter() - tick
        print(f"held-out images ({len(holdout)}, label spaces {', '.join(eval_spaces)}) before: {figures(before)}")

        settings = FitSettings(space.name, args.scope, args.iterations, args.batch_size, args.lr, args.lr_shared,
                               args.seed)
        tick = time.perf_counter()
        cache = sampler = None
        if args.scope in CACHED_SCOPES:
            if job is not None:
                job.progress(0.0, "computing the backbone and pixel-decoder features of the training images",
                             force=True)
            cache = FeatureCache(model, train_set, model.config.max_size, device)
        else:
            sampler = MixedSampler([train_set], size=model.config.max_size, seed=args.seed,  # type: ignore[list-item]
                                   augment_data=not args.no_augment)
        timings["cache"] = time.perf_counter() - tick
        tick = time.perf_counter()
        on_step = None if job is None else job.iteration_callback(args.iterations)
        losses = fit(model, settings, device, cache=cache, sampler=sampler, on_step=on_step,
                     progress=not args.no_progress)
        timings["fit"] = time.perf_counter() - tick
        if args.scope == "all":
            domain_info, domain_says = place_in_domain(model, train_set, space.name)
        print(f"domain: {domain_says}")
        if args.scope == "all" and model.domain_head is not None:
            print("warning: --scope all changed the pixel features that the domain head was fitted on; refit it "
                  "with `python -m train domain-head` if domain-aware proposals misjudge images.", file=sys.stderr)
        tick = time.perf_counter()
        after = measure("after")
        timings["evaluate_after"] = time.perf_counter() - tick
        print(f"held-out images after: {figures(after)}")
        window = max(1, len(losses) // 10)
        first, final = float(np.mean(losses[:window])), float(np.mean(losses[-window:]))
        activate, why = verdict(before, after, args.force) if plan is not None else (False, "")
        timings["total"] = time.perf_counter() - started
        info = {
            "base_checkpoint": str(base.resolve()),
            "space": space.name,
            "classes": space.class_names,
            "continued": refit,
            "scope": args.scope,
            "init_weights": weights,
            "iterations": args.iterations,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "lr_shared": args.lr_shared,
            "seed": args.seed,
            "augment": args.scope == "all" and not args.no_augment,
            "n_images": len(source.dataset),
            "n_train": len(train_set),
            "source": source.info,
            "holdout": {"fraction": args.holdout, "image_ids": _ids(source, holdout_ids),
                        "label_spaces": list(eval_spaces), "before": before, "after": after},
            "loss_first": round(first, 5),
            "loss_final": round(final, 5),
            "iterations_per_second": round(len(losses) / max(timings["fit"], 1e-9), 3),
            "seconds": {k: round(v, 2) for k, v in timings.items()},
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "domain": domain_info,
            "base_training": base_meta.get("training", {}),
        }
        if plan is not None:
            info["activation"] = {"active": activate, "why": why, "forced": bool(args.force)}
        save_checkpoint(out, model, {"finetune": info})
        print(f"loss {first:.4f} -> final {final:.4f} (mean of the first / last {window} iterations); "
              f"checkpoint saved to {out}")
        result = {"checkpoint": str(out.resolve()), "space": space.name, "classes": space.class_names,
                  "scope": args.scope, "loss_first": info["loss_first"], "loss_final": info["loss_final"],
                  "domain": domain_info["domain"], "before": before, "after": after, "active": activate}
        said = f"Label space {space.name!r} ({len(space.classes)} classes, scope {args.scope}) learned"
        if plan is not None:
            training = {"text_encoder": model.config.text_encoder, "finetune": info}
            try:
                parent_id, version_id, active_id = register(sessions, plan.project_id, base, base_meta, out, model,
                                                            training, activate)
            except StorageError as err:
                raise InvalidInput(f"{err} (the checkpoint is saved in {out}; it was not registered)") from None
            if activate:
                outcome = f"model version {version_id} (parent {parent_id}) is now ACTIVE: {why}."
            else:
                kept = f"version {active_id}" if active_id is not None else "no version"
                outcome = (f"model version {version_id} (parent {parent_id}) was registered but NOT made active: "
                           f"{why}; the active model stays {kept}. Pass --force to activate it anyway, or "
                           "choose it on the app's Fine-tune tab.")
            print(outcome)
            said += f": {outcome}"
            result.update(model_version_id=version_id, parent_model_version_id=parent_id)
        else:
            said += f": checkpoint {out.resolve()}."
        if job is not None:
            job.done(f"{said} Loss {first:.3f} -> {final:.3f}. Domain: {domain_says}.", result)
        return 0
    finally:
        if engine is not None:
            engine.dispose()


def _ids(source: Source, indices: list[int]) -> list[Any]:
    images = source.dataset.images
    return [images[i].image_id if isinstance(source.dataset, AcceptedDataset) else images[i].file_name
            for i in indices]


def main(argv: list[str] | None = None) -> int:
    return run_as_job(parse_args(argv), run, "loading the data and the model")


if __name__ == "__main__":
    sys.exit(main())
