"""What a fine-tune trains (its scope), the per-image feature cache, and the training loop.

Scopes (docs/MODEL.md, "Fine-tuning"):
- `lsqe`: only the query set (LSQE) of the label space being learned; SPEC §3's route for a new space.
- `decoder`: also the transformer decoder and the classifier (class projection W, no-object
  embedding v, temperature τ), which every label space shares.
- `all`: every weight (backbone and pixel decoder too), except other spaces' query sets (this data
  does not use them) and the domain head (fitted separately, never by the loss).
With `lsqe` and `decoder` the backbone and pixel decoder are frozen, so their output is computed
once per training image and view (the image as is and mirrored) and cached: an iteration then runs
only the transformer decoder. `all` needs a fresh forward pass per step, with random scale, crop and flip.

Shape legend: B images, C mask-feature channels, h x w = S/4 x S/4 for S x S inputs, N masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from resi_core.data import MixedSampler, TrainSample, augment, collate
from resi_core.model import RESICriterion, RESIModel, Target
from resi_core.model.resi import PixelFeatures

SCOPES = ("lsqe", "decoder", "all")
CACHED_SCOPES = frozenset({"lsqe", "decoder"})
ENCODE_BATCH = 8  # views per no-grad encoder call when filling the cache


def trainable_parameters(model: RESIModel, space: str, scope: str) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Freeze what `scope` keeps fixed; return (the space's query set, the shared weights that train)."""
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose from {', '.join(SCOPES)}.")
    query = model.query_set(space)
    if scope == "lsqe":
        shared: list[nn.Parameter] = []
    elif scope == "decoder":
        shared = [*model.mask2former.transformer_module.parameters(), *model.class_proj.parameters(),
                  model.no_object_embedding, model.logit_scale]
    else:
        fixed = {id(p) for p in model.query_sets} | (
            {id(p) for p in model.domain_head.parameters()} if model.domain_head is not None else set())
        shared = [p for p in model.parameters() if id(p) not in fixed]
    chosen = {id(query)} | {id(p) for p in shared}
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)
    return [query], shared


@dataclass
class CachedView:
    """One training image (or its mirror image) after the frozen backbone and pixel decoder."""

    mask_features: Tensor  # [C, h, w]
    multi_scale: tuple[Tensor, ...]  # 3 x [C_i, h_i, w_i]
    target: Target  # masks [N, S, S] at input resolution


class FeatureCache:
    """Pixel features of every view of a dataset's images, computed once without a graph."""

    def __init__(self, model: RESIModel, dataset: Sequence[TrainSample] | object, size: int, device: torch.device,
                 on_image: Callable[[int, int], None] | None = None):
        rng = np.random.default_rng(0)  # unused by a scale of exactly 1 without flip; required by augment
        self.views: list[CachedView] = []
        pending: list[TrainSample] = []
        n = len(dataset)  # type: ignore[arg-type]
        for i in range(n):
            fitted = augment(dataset[i], size, rng, scale_range=(1.0, 1.0), flip=False)  # type: ignore[index]
            mirrored = TrainSample(np.ascontiguousarray(fitted.image[:, ::-1]),
                                   np.ascontiguousarray(fitted.masks[:, :, ::-1]), fitted.labels, fitted.space)
            pending += [fitted, mirrored]
            if len(pending) >= ENCODE_BATCH or i == n - 1:
                self._encode(model, pending, size, device)
                pending = []
            if on_image is not None:
                on_image(i + 1, n)

    @torch.no_grad()
    def _encode(self, model: RESIModel, samples: list[TrainSample], size: int, device: torch.device) -> None:
        batch = collate(samples, size)
        features = model.encode(batch.pixel_values.to(device))  # mask_features [B, C, h, w]
        for b, target in enumerate(batch.targets):
            self.views.append(CachedView(
                features.mask_features[b].clone(),
                tuple(f[b].clone() for f in features.multi_scale_features),
                Target(target.space, target.masks.to(device), target.labels.to(device)),
            ))

    def __len__(self) -> int:
        return len(self.views)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[PixelFeatures, list[Target]]:
        """`batch_size` views drawn at random (without replacement while the cache has enough)."""
        picks = rng.choice(len(self.views), size=batch_size, replace=batch_size > len(self.views))
        views = [self.views[int(i)] for i in picks]
        features = PixelFeatures(
            mask_features=torch.stack([v.mask_features for v in views]),  # [B, C, h, w]
            multi_scale_features=tuple(torch.stack([v.multi_scale[level] for v in views])
                                       for level in range(len(views[0].multi_scale))),
        )
        return features, [v.target for v in views]


@dataclass(frozen=True)
class FitSettings:
    space: str
    scope: str
    iterations: int
    batch_size: int
    lr: float  # the query set's
    lr_shared: float  # every other trained weight's (decoder, all)
    seed: int
    grad_clip: float = 1.0


def fit(model: RESIModel, settings: FitSettings, device: torch.device, *, cache: FeatureCache | None = None,
        sampler: MixedSampler | None = None, on_step: Callable[[int, float], None] | None = None,
        progress: bool = False) -> list[float]:
    """Train what `settings.scope` trains; returns every iteration's loss.

    Batches come from `cache` (scopes lsqe and decoder) or from `sampler` (scope all). AdamW without
    weight decay (it would pull the weights away from the base rather than keep them near it), the
    learning rates cosine-decayed to 0, the shared weights' gradient clipped at `grad_clip`.
    `on_step(iterations done, loss)` runs after each step.
    """
    if (cache is None) == (sampler is None):
        raise ValueError("fit() takes batches from a feature cache or from a sampler, not both.")
    model.to(device).eval()  # eval: frozen includes normalization statistics; the decoder has no dropout
    query, shared = trainable_parameters(model, settings.space, settings.scope)
    criterion = RESICriterion(model).to(device)
    groups = [{"params": query, "lr": settings.lr}]
    if shared:
        groups.append({"params": shared, "lr": settings.lr_shared})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, settings.iterations) / settings.iterations))
    )
    torch.manual_seed(settings.seed)  # the criterion's sampled points
    rng = np.random.default_rng(settings.seed)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.iterations, desc=f"finetune {settings.space} ({settings.scope})", unit="it",
                   dynamic_ncols=True)
    losses: list[float] = []
    for _ in range(settings.iterations):
        if cache is not None:
            features, targets = cache.batch(rng, settings.batch_size)
        else:
            batch = sampler.batch(settings.batch_size)  # type: ignore[union-attr]
            targets = [Target(t.space, t.masks.to(device), t.labels.to(device)) for t in batch.targets]
            features = model.encode(batch.pixel_values.to(device))  # mask_features [B, C, h, w]
        output = model.decode(features, [settings.space] * len(targets))  # masks_queries_logits [L+1, B, Q, h, w]
        loss = criterion(model, output, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        if shared and settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(shared, settings.grad_clip)
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
    for param in model.parameters():
        param.requires_grad_(False)
    return losses
