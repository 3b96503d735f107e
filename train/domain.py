"""`python -m train domain-head`: fit a trained model's domain head (which label space's images an image
looks like), for domain-aware OMI.

Why: a query set has only ever seen its own dataset's images. On an image from another dataset's
domain (a portrait close-up for the street set) it still proposes its classes with high scores
(road and sky painted over a wall), and nothing in its training said otherwise: other datasets'
images are never negatives for it (SPEC §3). The domain head is a linear classifier on pooled pixel
features, fitted on the training images with their dataset as the label, which is known without
inventing any class label. The predictor then holds a query set whose domain is not the image's
likeliest among the asked ones to a higher score threshold (docs/MODEL.md, "Domain-aware OMI").

The rest of the model is frozen and unchanged: the head reads features, it never shapes them.

Two datasets whose images the head cannot tell apart (avenue is annotated on street's kind of images)
are one domain: holding one of their query sets on the other's images would hold a set on the images
it was trained on. After a first fit with one class per dataset, datasets whose held-out images the
head separates in fewer than `SAME_DOMAIN_ACCURACY` of cases (pairwise; chance is one half) are merged,
the head is fitted again over the merged domains, named by their first dataset, and the others inherit
that domain (`RESIModel.space_domains`, as a fine-tuned space does).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from resi_core.data import CocoDataset, DatasetError
from resi_core.image_io import resize_for_model, to_pixel_values
from resi_core.model import CheckpointError, RESIModel, load_checkpoint, save_checkpoint
from resi_core.model.checkpoint import read_meta
from train.threads import use_threads

# Two datasets are one domain when the head tells their held-out images apart less often than this
# (pairwise: each image scored against its own dataset and the other one only; chance is 0.5). Our
# choice: halfway between chance and certainty; on the bench world distinct domains score near 1.
SAME_DOMAIN_ACCURACY = 0.75
# Merging needs evidence: two datasets with fewer held-out images than this between them are kept apart
# (with a handful, an accuracy under SAME_DOMAIN_ACCURACY is as likely to be chance).
MIN_HELD_TO_MERGE = 10


@torch.inference_mode()
def pooled_dataset_features(
    model: RESIModel, dataset: CocoDataset, count: int, progress: tqdm | None = None
) -> torch.Tensor:
    """[n, F] pooled pixel features of the first `count` images of `dataset` (n = min(count, len)).

    `dataset` may be anything with `len()` and `image(index)` (an RGB uint8 array), as CocoDataset;
    images are prepared as the Predictor prepares them."""
    rows = []
    for index in range(min(count, len(dataset))):
        image = dataset.image(index)  # pixels only: the head never needs the masks
        resized, info = resize_for_model(image, model.config.max_size, 32, model.config.upscale)
        features = model.encode(to_pixel_values(resized, info.padded_hw).to(next(model.parameters()).device))
        rows.append(model.pooled_features(features, info.valid_fraction)[0].cpu())
        if progress is not None:
            progress.update(1)
    return torch.stack(rows)


@torch.inference_mode()
def mean_domain_probs(model: RESIModel, dataset: CocoDataset, count: int) -> tuple[dict[str, float], int]:
    """The domain head's mean probability per domain over the first `count` images of `dataset`,
    and how many images that was."""
    probs = model.pooled_domain_probs(pooled_dataset_features(model, dataset, count))  # [n, S]
    return dict(zip(model.domain_spaces, probs.mean(0).tolist(), strict=True)), len(probs)


def fit_linear(features: torch.Tensor, labels: torch.Tensor, classes: int, l2: float = 1e-3,
               steps: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression (L-BFGS, L2 on the standardized weights) -> (weight, bias) on raw features."""
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    x = (features - mean) / std
    weight = torch.zeros(classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    w = weight.detach() / std  # fold the standardization in: w·(f - mean)/std + b
    return w, bias.detach() - w @ mean


def fit_domain_head(
    model: RESIModel, datasets: Sequence[CocoDataset], images_per_space: int = 400, progress: bool = True
) -> dict[str, float]:
    """Fit and install `model`'s domain head on `datasets` (one per trained label space).

    Four fifths of each dataset's images fit the head, the last fifth measures it; datasets the head
    cannot tell apart become one domain (module docstring). Returns the held-out accuracy per domain
    (empty when every dataset fell into one domain: then no head is installed, as nothing can be held).
    The model is left in eval mode.
    """
    names = [d.name for d in datasets]
    unknown = [n for n in names if n not in model.label_spaces]
    if unknown:
        raise DatasetError(f"Datasets {unknown} are not label spaces of this model: {list(model.label_spaces)}.")
    if len(set(names)) < 2 or len(set(names)) != len(names):
        raise DatasetError(f"A domain head needs datasets of two or more label spaces, each once; got {names}.")
    model.eval()
    total = sum(min(images_per_space, len(d)) for d in datasets)
    bar = tqdm(total=total, desc="domain head: encode", unit="img", disable=not progress)
    fit_x, fit_y, held_x, held_y = [], [], [], []
    for label, dataset in enumerate(datasets):
        feats = pooled_dataset_features(model, dataset, images_per_space, bar)
        cut = max(1, int(round(0.8 * len(feats)))) if len(feats) > 1 else len(feats)
        fit_x.append(feats[:cut])
        fit_y.append(torch.full((cut,), label))
        held_x.append(feats[cut:])
        held_y.append(torch.full((len(feats) - cut,), label))
    bar.close()
    x, held = torch.cat(fit_x), torch.cat(held_x)
    weight, bias = fit_linear(x, torch.cat(fit_y), len(datasets))
    domain_of = same_domains(held @ weight.T + bias, torch.cat(held_y), names)  # dataset index -> domain index
    domains = list(dict.fromkeys(domain_of))
    for space in names:  # a refit forgets what an earlier head merged
        model.space_domains.pop(space, None)
    if len(domains) < 2:
        model.domain_head, model.domain_spaces = None, []
        return {}
    if len(domains) < len(names):
        relabel = torch.tensor([domains.index(d) for d in domain_of])
        weight, bias = fit_linear(x, relabel[torch.cat(fit_y)], len(domains))
    domain_names = [names[d] for d in domains]
    model.set_domain_head(domain_names, weight.to(next(model.parameters())), bias.to(next(model.parameters())))
    for i, d in enumerate(domain_of):
        if names[i] != names[d]:
            model.set_space_domain(names[i], names[d])
    accuracy = {}
    for name in domain_names:
        members = [i for i, d in enumerate(domain_of) if names[d] == name]
        rows = torch.cat([held_x[i] for i in members])
        if len(rows):
            predicted = (rows @ weight.T + bias).argmax(-1)
            accuracy[name] = float((predicted == domain_names.index(name)).float().mean())
    return accuracy


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a file that is not JSON is a ValueError naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def same_domains(held_logits: torch.Tensor, held_labels: torch.Tensor, names: Sequence[str]) -> list[int]:
    """For each dataset, the index of the first dataset of its domain: datasets a and b are one domain when
    the head's held-out logits [n, S] separate their images (a's above b's on a's images, and the other
    way round) in fewer than SAME_DOMAIN_ACCURACY of them, out of at least MIN_HELD_TO_MERGE; chains
    (a ~ b, b ~ c) are one domain."""
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            rows_a, rows_b = held_logits[held_labels == a], held_logits[held_labels == b]
            if not len(rows_a) or not len(rows_b) or len(rows_a) + len(rows_b) < MIN_HELD_TO_MERGE:
                continue
            right = (rows_a[:, a] > rows_a[:, b]).sum() + (rows_b[:, b] > rows_b[:, a]).sum()
            if float(right) / (len(rows_a) + len(rows_b)) < SAME_DOMAIN_ACCURACY:
                parent[max(find(a), find(b))] = min(find(a), find(b))
    return [find(i) for i in range(len(names))]


def datasets_from_config(path: str | Path, data_root: str | None = None) -> list[CocoDataset]:
    """The datasets of a pretrain config (configs/world_demo.json's shape)."""
    config = read_json(path)
    if not isinstance(config, dict):
        raise DatasetError(f"{path} is not a pretrain config (a JSON object).")
    root = Path(data_root if data_root is not None else config.get("data_root", "."))
    specs = config.get("datasets") or []
    if not specs:
        raise DatasetError(f"{path} lists no datasets.")
    return [CocoDataset(d["name"], root / d["images"], root / d["instances"]) for d in specs]


def add_domain_head(checkpoint: str | Path, datasets: Sequence[CocoDataset], images_per_space: int = 1000,
                    progress: bool = True, device: str | torch.device = "cpu") -> dict[str, float]:
    """Fit the domain head of the checkpoint folder `checkpoint` and write it back.

    The training info and the git commit that trained the weights are kept. The weights file is
    replaced before meta.json; a crash in between leaves head weights that meta.json does not list,
    which `load_checkpoint` ignores, so the checkpoint stays usable.
    """
    meta = read_meta(checkpoint)
    model = load_checkpoint(checkpoint, map_location=device)
    accuracy = fit_domain_head(model, datasets, images_per_space, progress)
    training = dict(meta.get("training") or {})
    merged = {d.name: model.space_domains[d.name] for d in datasets if d.name in model.space_domains}
    training["domain_head"] = {"images_per_space": images_per_space, "held_out_accuracy": accuracy,
                               "same_domain": merged}
    save_checkpoint(checkpoint, model, training, git_commit=meta.get("git_commit"))
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m train domain-head",
        description="Fit a checkpoint's domain head on its training datasets (the rest of the model is "
        "unchanged) and write it into the checkpoint. The predictor then holds query sets of other domains "
        "to a higher score threshold.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint folder to read and update")
    parser.add_argument("--config", required=True, help="the pretrain config whose datasets trained the model")
    parser.add_argument("--data-root", help="folder the dataset paths are relative to (overrides the config)")
    parser.add_argument("--images-per-space", type=int, default=1000, help="images read per dataset (default: 1000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=int,
                        help="CPU threads (default: torch's choice; 1 is far faster on a machine busy with other work)")
    args = parser.parse_args(argv)
    if args.images_per_space < 2:
        print("error: --images-per-space must be at least 2 (a fifth is held out).", file=sys.stderr)
        return 2
    try:
        use_threads(args.threads)
        datasets = datasets_from_config(args.config, args.data_root)
        accuracy = add_domain_head(args.checkpoint, datasets, args.images_per_space, not args.no_progress)
    except (CheckpointError, DatasetError, ValueError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("held-out accuracy: " + (", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
                                   or "none (every dataset's images look alike: no head, nothing is held)"))
    for space, domain in read_meta(args.checkpoint)["training"]["domain_head"]["same_domain"].items():
        print(f"{space}: its images look like {domain}'s (one domain; never held on them)")
    print(f"domain head written to {args.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
