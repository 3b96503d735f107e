"""`python -m train calibrate`: fit a checkpoint's score temperature and familiarity check on world images.

Why: a model trained only on the generated world is confidently wrong on real photos ("sky 1.00" on an
indoor cat). Two post-hoc fits, both on world validation images the benchmark table does not use, make it
say what it knows:
- **Temperature scaling** (Guo et al., 2017): the predictor divides the class logits by T. T is chosen on
  the fitting images so that proposals with score s are right a share s of the time (the expected
  calibration error, metrics/calibration.py, with the app's score threshold), and checked on other images.
- **A monotone score map** after it: centred isotonic regression (Oron & Flournoy, 2017) of "right" on the
  temperature-scaled score of the fitting images' proposals, a piecewise-linear curve through the centre of
  each isotonic block. One temperature cannot bend the curve (with T alone the error stayed near 0.08 on
  the demo); the map can, and it keeps the order of the scores between its outer knots.
- **Familiarity**: per scene kind of the world, a Gaussian (mean and shrunk covariance) of the pooled
  pixel features the domain head also reads; an image whose Mahalanobis distance to the nearest kind is
  above the threshold is flagged as unlike the training data. The threshold is a high quantile of the
  distances of world images not used for the fit.

The rest of the model is unchanged. Image sets (M1-M4 validation images, `--images` per benchmark each):
seed S fits the Gaussian and T, seed S+1 sets the familiarity threshold, seed S+2 checks both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.isotonic import IsotonicRegression
from tqdm import tqdm

from formats.coco import GroundTruth, Prediction, load_ground_truth
from formats.images import IMAGE_SUFFIXES, ImageError
from formats.images import decode_image as load_image
from resi_core.image_io import resize_for_model, to_pixel_values
from resi_core.metrics.calibration import expected_calibration_error
from resi_core.metrics.piq import IGNORED, TRUE_POSITIVE, image_matches
from resi_core.metrics.segments import iter_image_segments
from resi_core.model import CheckpointError, RESIModel, ScoreMap, load_checkpoint, read_meta, save_checkpoint
from resi_core.predictor import Predictor, SpacesRequest
from resi_core.world import BENCHMARK_SYNONYMS, BENCHMARKS, generate, prepare_out_dir, write_world
from train.threads import use_threads

# Share of the threshold images' distances at or below the familiarity threshold: about 5 % of world
# images are flagged by construction (the product's ceiling); 0.98 flagged 1 % of world images but left
# 18 % of coco128's photos unflagged with the demo.
FAMILIAR_QUANTILE = 0.95
# Covariance shrinkage toward its mean variance (Ledoit-Wolf style, fixed): pooled features are 2x the
# channels, and a few hundred images cannot pin down every direction.
SHRINKAGE = 0.1


@dataclass(frozen=True)
class WorldImage:
    bench: str
    gt: GroundTruth
    image_id: int
    image: np.ndarray  # [H, W, 3] uint8
    kind: str  # the scene kind (world domain) it was drawn from


@dataclass(frozen=True)
class WorldSet:
    """Validation images of M1-M4 (one seed) with their ground truth, written to a folder."""

    seed: int
    folders: dict[str, Path]

    def images(self) -> list[WorldImage]:
        out = []
        for bench, folder in self.folders.items():
            gt = load_ground_truth(folder / "instances.json")
            kinds = {im["id"]: im["domain"] for im in gt.raw["images"]}
            out += [WorldImage(bench, gt, im.id, load_image(folder / "images" / im.file_name), kinds[im.id])
                    for im in gt.images.values()]
        return out


def write_world_set(root: Path, seed: int, per_benchmark: int, benchmarks: Sequence[str] = tuple(BENCHMARKS)
                    ) -> WorldSet:
    folders = {}
    for bench in benchmarks:
        folder = root / f"{bench}-seed{seed}"
        prepare_out_dir(folder, overwrite=True)
        write_world(generate(bench, "val", per_benchmark, seed), bench, folder, split="val", seed=seed)
        folders[bench] = folder
    return WorldSet(seed, folders)


@torch.inference_mode()
def pooled(model: RESIModel, images: Sequence[np.ndarray], progress: bool, what: str) -> torch.Tensor:
    """[N, F] pooled pixel features, images prepared as the Predictor prepares them."""
    rows = []
    device = next(model.parameters()).device
    for image in tqdm(images, desc=f"calibrate: features of {what}", unit="img", disable=not progress):
        resized, info = resize_for_model(image, model.config.max_size, 32, model.config.upscale)
        features = model.encode(to_pixel_values(resized, info.padded_hw).to(device))
        rows.append(model.pooled_features(features, info.valid_fraction)[0].cpu())
    return torch.stack(rows)


def fit_familiarity(features: torch.Tensor, kinds: Sequence[str], shrinkage: float = SHRINKAGE
                    ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """features [N, F] of familiar images and the kind of each -> (kinds, means [K, F], whitening [K, F, F]):
    one Gaussian per kind (`fit_gaussian`)."""
    names = sorted(set(kinds))
    fits = [fit_gaussian(features[[i for i, k in enumerate(kinds) if k == name]], shrinkage) for name in names]
    return names, torch.stack([m for m, _ in fits]), torch.stack([w for _, w in fits])


def fit_gaussian(features: torch.Tensor, shrinkage: float = SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """features [N, F] -> (mean [F], whitening [F, F]) with whitening · (x − mean) of unit covariance under
    the covariance shrunk toward its mean variance: (1 − s)·Σ + s·mean(diag Σ)·I."""
    x = features.double()
    mean = x.mean(0)
    centered = x - mean
    cov = centered.T @ centered / max(len(x) - 1, 1)  # [F, F]
    cov = (1 - shrinkage) * cov + shrinkage * cov.diagonal().mean() * torch.eye(len(mean), dtype=x.dtype)
    lower = torch.linalg.cholesky(cov)
    whitening = torch.linalg.solve_triangular(lower, torch.eye(len(mean), dtype=x.dtype), upper=False)
    return mean.float(), whitening.float()


def unlike_images(folders: Sequence[Path], limit: int) -> list[np.ndarray]:
    """Up to `limit` images from each folder (not world images: real photos, for the flag rate)."""
    images = []
    for folder in folders:
        if not folder.is_dir():
            raise ValueError(f"--unlike {folder} is not a folder.")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
        if not files:
            raise ValueError(f"--unlike {folder} holds no image files.")
        images += [load_image(f) for f in files]
    return images


@dataclass(frozen=True)
class ScoredProposal:
    """One proposal of the predictor: whether PIQ's matching found it right, and the class logits [K + 1] of
    each query behind it with its class's index, so that its score can be recomputed for any temperature."""

    right: bool
    logits: tuple[tuple[torch.Tensor, int], ...]

    def score(self, temperature: float, score_map: ScoreMap | None = None) -> float:
        score = max(float((z / temperature).softmax(-1)[label]) for z, label in self.logits)
        return score if score_map is None else score_map(score)


@torch.inference_mode()
def image_proposals(predictor: Predictor, item: WorldImage) -> list[ScoredProposal]:
    """The predictor's proposals on one benchmark image, with their outcomes and query logits. Temperature
    scaling changes only their scores (resi_core.postprocess.rescore), so they are computed once."""
    model, gt, image_id, image = predictor.model, item.gt, item.image_id, item.image
    request = SpacesRequest(BENCHMARKS[item.bench], BENCHMARK_SYNONYMS.get(item.bench, ()))
    prediction = predictor.predict(image, request, with_instances=False)
    ids = {c.name: c.id for c in gt.categories.values()}
    preds = [Prediction(image_id, ids[s.class_name], s.to_rle(), s.score) for s in prediction.segments]
    one = GroundTruth({image_id: gt.images[image_id]}, gt.categories,
                      tuple(a for a in gt.annotations if a.image_id == image_id))
    isthing = {i: c.isthing for i, c in gt.categories.items()}
    spaces = {i: c.label_spaces for i, c in gt.categories.items()}
    outcomes = image_matches(next(iter_image_segments(one, preds)), isthing, spaces)[2]  # [D]
    # The predictor's own decoder pass, through the model's public steps (features as the predictor's).
    output = model.decode(model.encode(*model.preprocess(image)), list(request.spaces))
    hidden = output.hidden_states[-1]  # [k, Q, D]
    logits = {space: model.space_logits(hidden[i], space).float() for i, space in enumerate(request.spaces)}
    out = []
    for seg, outcome in zip(prediction.segments, outcomes.tolist(), strict=True):
        if outcome == IGNORED:
            continue
        behind = tuple((logits[src.label_space][src.query_index],
                        model.label_spaces[src.label_space].index(src.class_name)) for src in seg.sources)
        out.append(ScoredProposal(outcome == TRUE_POSITIVE, behind))
    return out


def ece_at(proposals: Sequence[ScoredProposal], temperature: float, score_map: ScoreMap | None = None
           ) -> float | None:
    scores = np.array([p.score(temperature, score_map) for p in proposals])
    return expected_calibration_error(scores, np.array([p.right for p in proposals], dtype=bool))


def fit_temperature(proposals: Sequence[ScoredProposal]) -> float:
    """The temperature of least ECE: a log-spaced grid from 0.25 to 64, then a finer one around its best."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(64.0), 25))
    best = min(grid, key=lambda t: ece_at(proposals, float(t)) or 0.0)
    fine = best * np.exp(np.linspace(-0.12, 0.12, 13))
    return float(min(fine, key=lambda t: ece_at(proposals, float(t)) or 0.0))


def fit_score_map(scores: np.ndarray, right: np.ndarray) -> ScoreMap | None:
    """Centred isotonic regression of right [N] bool on scores [N]: the isotonic fit's blocks (sklearn's
    pool-adjacent-violators), one knot per block at its scores' mean with its share right, (k + ½)/(n + 1)
    for k right of n (Jeffreys' estimate: no finite sample shows a proposal always or never right, and a
    score of 1 would stay visible above the app's highest threshold). None when the fit has fewer than
    two blocks (nothing to map)."""
    scores, right = np.asarray(scores, dtype=np.float64), np.asarray(right, dtype=np.float64)
    fitted = IsotonicRegression(y_min=0.0, y_max=1.0).fit_transform(scores, right)
    blocks = [fitted == v for v in np.unique(fitted)]  # in increasing order of score
    if len(blocks) < 2:
        return None
    xs = [float(scores[b].mean()) for b in blocks]
    ys = np.maximum.accumulate([(float(right[b].sum()) + 0.5) / (int(b.sum()) + 1) for b in blocks])
    return ScoreMap(tuple(xs), tuple(float(y) for y in ys))


def collect(predictor: Predictor, world: list[WorldImage], progress: bool, what: str) -> list[ScoredProposal]:
    out: list[ScoredProposal] = []
    for item in tqdm(world, desc=f"calibrate: proposals on {what}", unit="img", disable=not progress):
        out += image_proposals(predictor, item)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train calibrate",
        description="Fit a checkpoint's score temperature (calibrated proposal scores) and familiarity check "
        "(flags images unlike the training data) on generated world validation images, and write both into "
        "the checkpoint. The weights are unchanged. docs/MODEL.md explains both.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder to read and update")
    parser.add_argument("--images", type=int, default=100, help="world images per benchmark and set (default 100)")
    parser.add_argument("--seed", type=int, default=11,
                        help="seed S of the fitting images; S+1 sets the threshold, S+2 checks (default 11; the "
                        "benchmark table uses seed 0)")
    parser.add_argument("--unlike", type=Path, action="append", default=[],
                        help="a folder of images unlike the world (e.g. real photos): report how many are flagged")
    parser.add_argument("--unlike-limit", type=int, default=200, help="images read per --unlike folder (default 200)")
    parser.add_argument("--dry-run", action="store_true", help="report the figures, write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: torch's choice; 1 is far faster on a machine busy with other work)")
    args = parser.parse_args(argv)
    try:
        use_threads(args.threads)
        if args.images < 10:
            raise ValueError("--images must be at least 10.")
        if args.seed < 1:
            raise ValueError("--seed must be at least 1 (seed 0's images are the benchmark table's).")
        return run(args)
    except (CheckpointError, ImageError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    meta = read_meta(args.checkpoint)
    model = load_checkpoint(args.checkpoint).eval()
    unlike = unlike_images(args.unlike, args.unlike_limit) if args.unlike else []
    predictor = Predictor(model, None, cache_size=1, out_of_domain_threshold=None)
    with tempfile.TemporaryDirectory(prefix="resi-calibrate-") as tmp:
        # The benchmarks whose label spaces the checkpoint has (M5 needs avenue, which older ones lack).
        benchmarks = [b for b, spaces in BENCHMARKS.items() if set(spaces) <= set(model.label_spaces)]
        if not benchmarks:
            raise ValueError(f"{args.checkpoint} has none of the world's benchmarks' label spaces "
                             f"({', '.join(model.label_spaces)}); calibrate works on world-trained checkpoints.")
        sets = [write_world_set(Path(tmp), args.seed + k, args.images, benchmarks) for k in range(3)]
        fit, limit, check = (s.images() for s in sets)
    # Familiarity: fit on one set, threshold on a second, rates on the third and on --unlike.
    kinds, means, whitening = fit_familiarity(pooled(model, [x.image for x in fit], progress, "fitting images"),
                                              [x.kind for x in fit])
    model.set_familiarity(kinds, means, whitening, 1.0)
    limit_distances = model.familiarity_distance(pooled(model, [x.image for x in limit], progress, "threshold images"))
    threshold = float(torch.quantile(limit_distances, FAMILIAR_QUANTILE))
    model.set_familiarity(kinds, means, whitening, threshold)
    check_rate = float((model.familiarity_distance(pooled(model, [x.image for x in check], progress, "check images"))
                        > threshold).float().mean())
    unlike_rate = None
    if unlike:
        unlike_distances = model.familiarity_distance(pooled(model, unlike, progress, "--unlike images"))
        unlike_rate = float((unlike_distances > threshold).float().mean())
    # Temperature: fitted on the fitting images' proposals, checked on the check images' (the same
    # proposals at any temperature: only their scores change).
    model.set_score_temperature(1.0)
    model.set_score_map(None)
    fitting = collect(predictor, fit, progress, "fitting images")
    checking = collect(predictor, check, progress, "check images")
    if not fitting or not checking:
        raise ValueError("The model proposes nothing on the world images; there is nothing to calibrate.")
    best = fit_temperature(fitting)
    score_map = fit_score_map(np.array([p.score(best) for p in fitting]), np.array([p.right for p in fitting]))
    ece_before, ece_after = ece_at(checking, 1.0), ece_at(checking, best, score_map)
    model.set_score_temperature(best)
    model.set_score_map(score_map)

    report = {
        "images_per_benchmark": args.images,
        "seeds": {"fit": args.seed, "threshold": args.seed + 1, "check": args.seed + 2},
        "temperature": best,
        "ece_fit_before": ece_at(fitting, 1.0),
        "ece_fit_after": ece_at(fitting, best, score_map),
        "ece_check_before": ece_before,
        "ece_check_temperature_only": ece_at(checking, best),
        "ece_check_after": ece_after,
        "score_map_knots": 0 if score_map is None else len(score_map.scores),
        "proposals_fit": len(fitting),
        "proposals_check": len(checking),
        "right_share_check": float(np.mean([p.right for p in checking])),
        "familiarity_threshold": threshold,
        "familiar_quantile": FAMILIAR_QUANTILE,
        "flagged_world_check": check_rate,
        "flagged_unlike": unlike_rate,
        "unlike_folders": [str(f) for f in args.unlike],
        "unlike_images": len(unlike),
    }
    print(f"score temperature 1 -> {best:.3g} and a score map of {report['score_map_knots']} knots: expected "
          f"calibration error on {len(checking)} proposals of the check images {ece_before:.4f} -> "
          f"{report['ece_check_temperature_only']:.4f} (temperature) -> {ece_after:.4f} (map) "
          f"({report['right_share_check']:.1%} of them right)")
    print(f"familiarity threshold {threshold:.3f} ({FAMILIAR_QUANTILE:.0%} of the threshold images below it): "
          f"flagged {check_rate:.1%} of the world check images"
          + ("" if unlike_rate is None else f", {unlike_rate:.1%} of {len(unlike)} --unlike images"))
    if args.dry_run:
        print("dry run: the checkpoint is unchanged")
        return 0
    training = dict(meta.get("training") or {})
    training["calibration"] = report
    save_checkpoint(args.checkpoint, model, training, git_commit=meta.get("git_commit"))
    print(f"calibration written to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
