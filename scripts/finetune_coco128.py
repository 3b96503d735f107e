"""Fine-tuning on real photos: coco128 with a few of its classes, each scope, PIQ before and after.

    python scripts/finetune_coco128.py          # writes docs/finetune-coco128.json

The 128 coco128 photos (read in place from ../shared/data/coco128 or $RESI_COCO128) are uploaded to
one project; each is accepted with its COCO instance masks of the chosen classes (default person,
car, chair, cup; crowd regions left out) as ad-hoc segments, the way a labeler's corrections enter.
Then `python -m train finetune --project coco128 --space photos --scope S` runs once per scope from the
demo checkpoint, as a user would run it: the accepted images with any of the classes are split by
hash into training images and a held-out fifth, measured before and after.

What it is: a model trained from scratch on 128-px cartoons of the generated world, asked about real
640-px photos shrunk to 128 px. Figures are in points (0-100), our definitions (docs/METRICS.md);
times are wall-clock seconds on a shared machine, with its load.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch
from finetune_runs import ROOT, Labeler, common_arguments, finetune, fresh_folder, parsed, summary

from formats.coco import load_ground_truth
from formats.rle import decode_rle
from storage.files import inspect_image
from train.bench import machine_description

SPACE = "photos"


def coco128_folder() -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.shared_data import COCO128, MISSING

    if MISSING:
        raise SystemExit(MISSING)
    return COCO128


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_arguments(parser, "finetune-coco128")
    parser.add_argument("--classes", default="person,car,chair,cup", help="COCO classes to accept (default %(default)s)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "finetune-coco128.json")
    return parsed(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    coco = coco128_folder()
    gt = load_ground_truth(coco / "annotations_instances" / "instances_train2017.json")
    wanted = {cid: c.name for cid, c in gt.categories.items() if c.name in classes}
    if len(wanted) != len(classes):
        raise SystemExit(f"coco128 has no class {sorted(set(classes) - set(wanted.values()))}.")
    by_image = defaultdict(list)
    for ann in gt.annotations:
        if ann.category_id in wanted and not ann.iscrowd:
            by_image[ann.image_id].append(ann)

    fresh_folder(args.work)
    labeler = Labeler(args.work)
    project_id = labeler.project("coco128")
    counts = {"images": 0, "with_classes": 0, "masks": 0, "skipped_rotated": 0}
    for image in sorted(gt.images.values(), key=lambda im: im.id):
        data = (coco / "images" / "train2017" / image.file_name).read_bytes()
        truth = [(wanted[a.category_id], True, decode_rle(a.rle).astype(bool)) for a in by_image[image.id]]
        oriented = inspect_image(data)
        if (oriented.height, oriented.width) != (image.height, image.width):  # EXIF-rotated: COCO's masks are
            counts["skipped_rotated"] += 1  # in the file's own frame, the store's in the upright one
            truth = []
        labeler.accept(project_id, data, image.file_name, truth)
        counts["with_classes"] += bool(truth)
        counts["masks"] += len(truth)
        counts["images"] += 1
    labeler.close()
    print(f"project coco128: {counts}", flush=True)

    runs = []
    for scope in args.scopes.split(","):
        run = finetune(args.work, "coco128", SPACE, scope, args.checkpoint, args.work / "runs" / scope, args.extra)
        row = summary(scope, counts["with_classes"], run)
        row["holdout_per_class_before"] = row["holdout_before"]["per_class_piq"]
        row["holdout_per_class_after"] = row["holdout_after"]["per_class_piq"]
        runs.append(row)
        print(f"scope {scope:7s}: held-out PIQ {row['piq_before']} -> {row['piq_after']} on {row['n_holdout']} "
              f"photos, {row['seconds_command']:.1f} s (load {row['load_1min_before']:.2f})", flush=True)
    report = {
        "what": f"python -m train finetune --project coco128 --space {SPACE} --scope S from the demo checkpoint, on "
                f"coco128 photos accepted through storage with their COCO masks of {classes} (crowd left out); "
                "held-out = the command's own fifth of the photos that have any of these classes, by image hash",
        "command": " ".join(["python scripts/finetune_coco128.py", *(argv if argv is not None else sys.argv[1:])]),
        "units": "PIQ, PQ, mIoU, AP in points (0-100), our definitions (docs/METRICS.md); seconds of wall clock",
        "classes": classes,
        "project": counts,
        "finetune_flags": args.extra,
        "machine": machine_description(),
        "shared_machine_note": "timed on a machine shared with other jobs; load_1min_before is the 1-minute load "
                               "average when each run started",
        "runs": runs,
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
