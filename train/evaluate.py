"""`python -m train evaluate`: score COCO-format predictions with PIQ, mIoU, PQ per label space, AP and
overlap recall."""

from __future__ import annotations

import argparse
import sys

from resi_core.coco import FormatError, load_ground_truth, load_predictions, write_json
from resi_core.metrics import EvalResult, evaluate

DESCRIPTION = """\
Score predictions (COCO results JSON) against multi-label-space ground truth (COCO
instances JSON), both as described in docs/FORMATS.md.

Metrics (docs/METRICS.md; PIQ and the multi-label mIoU/PQ are this project's own
definitions, not formulas from the RESI paper, which were not available):
  PIQ   panoptic instance quality. Per class over the dataset: things matched greedily by
        score at IoU > 0.5, stuff merged per image; PIQ_c = sum TP IoU / (TP + FP/2 + FN/2).
        Masks of different classes may overlap. Equals COCO PQ when nothing overlaps.
        Also SQ (mean IoU of matches), RQ (F1 of matching), and things/stuff means.
  mIoU  multi-label: IoU of each class's union of masks, summed over the dataset, so a
        pixel may be "person" and "face" at once. Mean over classes seen on either side.
  PQ    COCO panoptic quality per label space, after pasting that space's predictions
        into a non-overlapping map by score; "mixed PQ" is the mean over spaces.
  AP    COCO mask AP (pycocotools) on thing classes, IoU 0.50:0.95; also AP50 and AP75.
  Overlap recall
        of the ground-truth pairs of masks of different label spaces that share at least
        half of the smaller one's pixels (person / face, car / wheel), the share where both
        masks are matched by a prediction of their class at IoU > 0.5 (PIQ's matching).
        "-" when the ground truth has no such pair.
Void pixels (images[i].void) and crowd regions count as in COCO panoptic.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train evaluate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gt", required=True, help="ground truth, COCO instances JSON")
    parser.add_argument("--pred", required=True, help="predictions, COCO results JSON list")
    parser.add_argument("--out", help="write the full result (per class, per space) to this JSON file")
    parser.add_argument("--per-class", action="store_true",
                        help="also print PIQ and IoU of every class, and overlap recall per pair of classes")
    return parser


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:6.2f}"


def summary_table(result: EvalResult, per_class: bool = False) -> str:
    """Plain-text table of the headline numbers (percent)."""
    p, ap, o = result.piq, result.ap, result.overlap
    rows = [
        ("PIQ", p.piq),
        ("  things", p.piq_things),
        ("  stuff", p.piq_stuff),
        ("  SQ", p.sq),
        ("  RQ", p.rq),
        ("mIoU", result.miou.miou),
        ("PQ (mean of spaces)", result.pq.pq_mean),
        *((f"  PQ {space}", r.piq) for space, r in result.pq.per_space.items()),
        ("AP", None if ap is None else ap.ap),
        ("  AP50", None if ap is None else ap.ap50),
        ("  AP75", None if ap is None else ap.ap75),
        (f"Overlap recall ({o.found}/{o.pairs} pairs)", o.recall),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{result.num_images} images, {result.num_predictions} predictions", ""]
    lines += [f"{name:<{width}}  {_pct(value)}" for name, value in rows]
    if per_class:
        lines += ["", f"{'class':<24} {'PIQ':>6} {'TP':>5} {'FP':>5} {'FN':>5} {'IoU':>6}"]
        for name, c in p.per_class.items():
            iou = result.miou.per_class.get(name)
            lines.append(f"{name[:24]:<24} {_pct(c.piq)} {c.tp:5d} {c.fp:5d} {c.fn:5d} {_pct(iou)}")
        if o.per_pair:
            lines += ["", f"{'overlapping pair':<32} {'found':>6} {'pairs':>6} {'recall':>6}"]
            for name, c in o.per_pair.items():
                lines.append(f"{name[:32]:<32} {c.found:6d} {c.pairs:6d} {_pct(c.recall)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        gt = load_ground_truth(args.gt)
        predictions = load_predictions(args.pred, gt)
        result = evaluate(gt, predictions)
        if args.out:
            write_json(args.out, result.to_json())
    except FormatError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(summary_table(result, args.per_class))
    if args.out:
        print(f"\nwrote {args.out}")
    return 0
