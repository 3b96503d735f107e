"""`python -m train predict`: run a checkpoint on a folder of images and write COCO results.

The proposals are the predictor's ESF-OMI segments, exactly what the app shows for the same request,
so `python -m train evaluate --gt GT --pred RESULTS` scores what a labeler would be given. With `--gt`,
the images are the ground truth's and every category id is the ground truth's (a predicted class maps
to the category of the same name, or one that lists it as a synonym); the ground truth's declared
synonyms are declared for the request too (person = pedestrian in M2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from formats.coco import FormatError, GroundTruth, load_ground_truth, write_json
from formats.images import IMAGE_SUFFIXES, ImageError
from formats.images import decode_image as load_image
from resi_core.labels import normalize_name
from resi_core.model import CheckpointError, load_checkpoint
from resi_core.predictor import AdHocRequest, MixedRequest, Predictor, Request, RequestError, SpacesRequest
from resi_core.text import get_text_encoder

DESCRIPTION = """\
Propose segments for every image of a folder with a RESI checkpoint and write them as a COCO
results JSON list (docs/FORMATS.md): image_id, category_id, segmentation (RLE), score, plus
file_name and category_name. The segments are the ESF-OMI proposals the app shows.

Without --gt, images are numbered 1..N in file-name order and categories 1..K in the request's
class order. With --gt (COCO instances JSON), the images are those of the ground truth (looked up
by file name in --images) and category ids are the ground truth's, so

  python -m train evaluate --gt GT.json --pred RESULTS.json --per-class

scores the file directly.
"""


class UsageError(ValueError):
    """A bad flag or input the user can fix."""


@dataclass(frozen=True)
class ImageJob:
    image_id: int
    path: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train predict", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (e.g. checkpoints/demo)")
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--spaces", default="", help="comma-separated trained label spaces, e.g. street,portrait")
    parser.add_argument("--classes", default="", help='comma-separated typed class names, e.g. "dog, cat"')
    parser.add_argument("--synonyms", default="",
                        help="declared-equal class pairs, e.g. person=pedestrian,car=auto (with --gt, the ground "
                        "truth's synonyms are added)")
    parser.add_argument("--gt", type=Path, help="ground truth, COCO instances JSON: its images and category ids")
    parser.add_argument("--out", required=True, type=Path, help="results JSON file to write")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="proposal score threshold (default 0.5)")
    parser.add_argument("--domain-aware", action="store_true",
                        help="domain-aware OMI (docs/MODEL.md): label spaces of another domain than the image's need "
                        "a score of 0.98 (default: off, as in the app)")
    parser.add_argument("--text-encoder", default="minilm", help="text encoder the checkpoint was trained with")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_synonyms(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in split_list(text):
        names = [n.strip() for n in item.split("=")]
        if len(names) != 2 or not all(names):
            raise UsageError(f"--synonyms takes pairs like person=pedestrian, got {item!r}.")
        pairs.append((names[0], names[1]))
    return tuple(pairs)


def build_request(spaces: tuple[str, ...], classes: tuple[str, ...], synonyms: tuple[tuple[str, str], ...]) -> Request:
    if not spaces and not classes:
        raise UsageError("Give --spaces (trained label spaces), --classes (typed names) or both.")
    if spaces and classes:
        return MixedRequest(spaces, classes, synonyms)
    if spaces:
        return SpacesRequest(spaces, synonyms)
    return AdHocRequest(classes)


def gt_synonyms(gt: GroundTruth) -> tuple[tuple[str, str], ...]:
    """The ground truth's declared synonyms as (class, synonym) pairs."""
    return tuple((c.name, s) for c in gt.categories.values() for s in c.synonyms)


def image_jobs(folder: Path, gt: GroundTruth | None) -> list[ImageJob]:
    if not folder.is_dir():
        raise UsageError(f"--images {folder} is not a folder.")
    if gt is not None:
        missing = [im.file_name for im in gt.images.values() if not (folder / im.file_name).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise UsageError(f"{len(missing)} images of --gt are not in {folder}: {shown}.")
        return [ImageJob(im.id, folder / im.file_name) for im in gt.images.values()]
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return [ImageJob(i, path) for i, path in enumerate(files, start=1)]


def category_ids(class_names: Sequence[str], gt: GroundTruth | None) -> dict[str, int]:
    """Class name of the request's mixed label space -> category id (the ground truth's, or 1..K)."""
    if gt is None:
        return {name: i for i, name in enumerate(class_names, start=1)}
    by_name: dict[str, int] = {}
    for c in gt.categories.values():
        for name in (c.name, *c.synonyms):
            by_name.setdefault(normalize_name(name), c.id)
    missing = [n for n in class_names if normalize_name(n) not in by_name]
    if missing:
        known = ", ".join(c.name for c in gt.categories.values())
        raise UsageError(f"Classes {missing} of the request are not categories of --gt ({known}); "
                         "ask for fewer classes, or declare synonyms with --synonyms.")
    return {n: by_name[normalize_name(n)] for n in class_names}


def run(args: argparse.Namespace) -> int:
    if not 0 <= args.score_threshold < 1:
        raise UsageError(f"--score-threshold must be in [0, 1), got {args.score_threshold}.")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name such as results.json.")
    gt = load_ground_truth(args.gt) if args.gt is not None else None
    synonyms = parse_synonyms(args.synonyms) + (gt_synonyms(gt) if gt is not None else ())
    request = build_request(split_list(args.spaces), split_list(args.classes), synonyms)
    jobs = image_jobs(args.images, gt)
    if not args.checkpoint.is_dir():
        raise UsageError(f"--checkpoint {args.checkpoint} is not a checkpoint folder.")
    encoder = get_text_encoder(args.text_encoder)
    model = load_checkpoint(args.checkpoint, text_encoder_id=encoder.id)
    predictor = Predictor(model, encoder, device=args.device, score_threshold=args.score_threshold, cache_size=1,
                          out_of_domain_threshold=0.98 if args.domain_aware else None)
    ids = category_ids(predictor.mixed_space(request).class_names, gt)
    results: list[dict] = []
    for job in tqdm(jobs, desc="predict", unit="img", disable=args.no_progress):
        try:
            image = load_image(job.path)
        except ImageError as err:
            raise UsageError(str(err)) from err
        prediction = predictor.predict(image, request, with_instances=False)
        for seg in prediction.segments:
            results.append({"image_id": job.image_id, "category_id": ids[seg.class_name], "segmentation": seg.to_rle(),
                            "score": round(float(seg.score), 6), "file_name": job.path.name,
                            "category_name": seg.class_name})
    write_json(args.out, results)
    print(f"wrote {len(results)} proposals for {len(jobs)} images to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, RequestError, FormatError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {err.strerror or err}: {err.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
