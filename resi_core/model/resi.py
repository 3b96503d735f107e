"""RESI: Mask2Former (from transformers) with a text-embedding classifier and label-space query sets.

Shape legend: B images, k query sets (decoder passes), Q queries, K classes, D hidden size,
Dt text dimension, L decoder layers (L + 1 prediction steps), H x W input, h x w = H/4 x W/4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resi_core.labels import LabelSpace, normalize_name
from resi_core.model.config import RESIConfig

SHARED_QUERIES = "shared"
MAX_LOGIT_SCALE = 100.0


@dataclass
class PixelFeatures:
    """Backbone + pixel decoder output for a batch of images; computed once per image."""

    mask_features: Tensor  # [B, C, h, w] per-pixel embeddings at 1/4 scale
    multi_scale_features: tuple[Tensor, ...]  # 3 x [B, feature_size, h_i, w_i], low to high resolution

    @property
    def batch_size(self) -> int:
        return self.mask_features.shape[0]


@dataclass
class DecoderOutput:
    """One transformer-decoder run with k query sets stacked on the batch axis."""

    hidden_states: Tensor  # [L+1, k, Q, D] layer-normed states, incl. the one before the first layer
    masks_queries_logits: Tensor  # [L+1, k, Q, h, w]


class RESIModel(nn.Module):
    """Mask2Former whose decoder content queries come from a per-label-space query set (LSQE).

    The parts are passed in; `build_model` is the only place that reads a config to make them.
    """

    def __init__(
        self,
        *,
        config: RESIConfig,
        mask2former: nn.Module,
        label_spaces: Sequence[LabelSpace],
        class_embeddings: dict[str, Tensor] | None,
        initial_queries: Tensor | None = None,
    ):
        super().__init__()
        if not label_spaces:
            raise ValueError("A RESI model needs at least one label space.")
        self.config = config
        self.mask2former = mask2former
        self.label_spaces: dict[str, LabelSpace] = {s.name: s for s in label_spaces}
        hidden = config.hidden_size
        transformer = mask2former.transformer_module
        # Content queries live in `query_sets`; the base model's own set is only an initializer.
        base_queries = transformer.queries_features.weight.detach().clone()
        transformer.queries_features = None
        if initial_queries is None:
            initial_queries = base_queries
        set_names = [SHARED_QUERIES] if config.query_mode == "shared" else list(self.label_spaces)
        self.query_set_names: list[str] = set_names
        self.query_sets = nn.ParameterList(nn.Parameter(initial_queries.clone()) for _ in set_names)

        # Union of class names over all trained spaces (normalized names share one column).
        self.union_names: list[str] = []
        self.space_columns: dict[str, list[int]] = {}
        self._rebuild_union()

        if config.classifier == "text":
            if class_embeddings is None:
                raise ValueError("The text classifier needs class embeddings for every label space.")
            self.class_proj = nn.Linear(hidden, config.text_dim)
            self.no_object_embedding = nn.Parameter(torch.randn(config.text_dim) / math.sqrt(config.text_dim))
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
            for i, space in enumerate(self.label_spaces):
                self._set_class_buffer(i, class_embeddings[space])
        else:
            self.linear_head = nn.Linear(hidden, len(self.union_names) + 1)
        # Optional domain head (train/domain.py fits it after training): which trained label space's
        # images does an image look like? The predictor uses it to hold out-of-domain query sets to a
        # higher score threshold. None until fitted; `domain_spaces` orders its outputs.
        self.domain_head: nn.Linear | None = None
        self.domain_spaces: list[str] = []
        # Label spaces the head does not know (added later by `train finetune`) inherit the domain of the
        # trained space whose images theirs look like: new space -> a name in `domain_spaces`.
        self.space_domains: dict[str, str] = {}
        # Fitted after training by `python -m train calibrate` (docs/MODEL.md): the predictor divides class
        # logits by `score_temperature` (temperature scaling), then maps each segment's score through
        # `score_map` (a monotone piecewise-linear curve, None for the identity), and `familiarity` says how
        # far an image's pooled features lie from those of the world's images (None until fitted).
        self.score_temperature: float = 1.0
        self.score_map: ScoreMap | None = None
        self.familiarity: Familiarity | None = None

    # ----- label spaces and class embeddings -------------------------------------------------------
    def _rebuild_union(self) -> None:
        index: dict[str, int] = {}
        self.union_names = []
        self.space_columns = {}
        for name, space in self.label_spaces.items():
            cols = []
            for c in space.classes:
                key = normalize_name(c.name)
                if key not in index:
                    index[key] = len(self.union_names)
                    self.union_names.append(c.name)
                cols.append(index[key])
            self.space_columns[name] = cols

    def _set_class_buffer(self, position: int, embeddings: Tensor) -> None:
        expected = (len(list(self.label_spaces.values())[position].classes), self.config.text_dim)
        if tuple(embeddings.shape) != expected:
            raise ValueError(f"Class embeddings have shape {tuple(embeddings.shape)}, expected {expected}.")
        self.register_buffer(f"class_embeddings_{position}", embeddings.detach().float().clone())

    def _space_position(self, space: str) -> int:
        if space not in self.label_spaces:
            raise KeyError(f"Unknown label space {space!r}; trained: {list(self.label_spaces)}.")
        return list(self.label_spaces).index(space)

    def class_embeddings(self, space: str) -> Tensor:
        """[K, Dt] normalized class-name embeddings of a trained label space (text classifier)."""
        if self.config.classifier != "text":
            raise ValueError("A linear-head model has no class embeddings; use space_logits().")
        return getattr(self, f"class_embeddings_{self._space_position(space)}")

    def union_class_embeddings(self) -> Tensor:
        """[U, Dt] one embedding per union column (the first space that has the name)."""
        rows = {}
        for space, cols in self.space_columns.items():
            emb = self.class_embeddings(space)
            for j, col in enumerate(cols):
                rows.setdefault(col, emb[j])
        return torch.stack([rows[c] for c in range(len(self.union_names))])

    # ----- classification ----------------------------------------------------------------------------
    def class_logits(self, hidden: Tensor, class_embeddings: Tensor | None) -> Tensor:
        """[..., Q, D] x [K, Dt] -> [..., Q, K+1]; the last column is no-object.

        Text: z_qc = tau * <norm(W h_q), t_c>, z_q0 = tau * <norm(W h_q), norm(v)>.
        Linear: `class_embeddings` is ignored and the union head's [..., Q, U+1] logits are returned;
        `space_columns[space]` says which columns belong to a space.
        """
        if self.config.classifier == "linear":
            return self.linear_head(hidden)
        query = F.normalize(self.class_proj(hidden), dim=-1)  # [..., Q, Dt]
        targets = torch.cat([class_embeddings.to(query), F.normalize(self.no_object_embedding, dim=0)[None]])
        scale = self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
        return scale * query @ targets.T  # [..., Q, K+1]

    def space_logits(self, hidden: Tensor, space: str) -> Tensor:
        """[..., Q, D] -> [..., Q, K_space+1] logits over one trained space's classes + no-object."""
        if self.config.classifier == "text":
            return self.class_logits(hidden, self.class_embeddings(space))
        cols = self.space_columns[space] + [len(self.union_names)]
        return self.linear_head(hidden)[..., cols]

    def union_logits(self, hidden: Tensor) -> Tensor:
        """[..., Q, D] -> [..., Q, U+1] logits over the union of all class names + no-object."""
        if self.config.classifier == "text":
            return self.class_logits(hidden, self.union_class_embeddings())
        return self.linear_head(hidden)

    # ----- forward passes ------------------------------------------------------------------------------
    def preprocess(self, image_uint8_hwc: np.ndarray) -> tuple[Tensor]:
        """RGB uint8 HWC -> ([1, 3, Hp, Wp],): long side scaled to at most max_size (to max_size with
        `config.upscale`), normalized, and zero-padded bottom/right to a multiple of 32, exactly as the
        Predictor prepares images."""
        from resi_core.image_io import resize_for_model, to_pixel_values

        if image_uint8_hwc.ndim != 3 or image_uint8_hwc.shape[2] != 3 or image_uint8_hwc.dtype != np.uint8:
            raise ValueError(f"Expected an RGB uint8 HxWx3 image, got {image_uint8_hwc.shape} {image_uint8_hwc.dtype}.")
        resized, info = resize_for_model(image_uint8_hwc, self.config.max_size, 32, self.config.upscale)
        device = next(self.parameters()).device
        return (to_pixel_values(resized, info.padded_hw).to(device),)

    def encode(self, pixel_values: Tensor) -> PixelFeatures:
        """[B, 3, H, W] normalized -> backbone + pixel decoder features (run once per image)."""
        out = self.mask2former.pixel_level_module(pixel_values)
        return PixelFeatures(
            mask_features=out.decoder_last_hidden_state,
            multi_scale_features=tuple(out.decoder_hidden_states),
        )

    # ----- domain head -----------------------------------------------------------------------------------
    def pooled_dim(self) -> int:
        c = self.config
        return 2 * (3 * c.feature_size + c.mask_feature_size)

    @staticmethod
    def pooled_features(features: PixelFeatures, extent_fraction: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """[B, F]: mean and standard deviation of every pixel-feature map over the image (not the padding).

        `extent_fraction` is the share of rows and columns that hold the image (ResizeInfo).
        """
        pooled = []
        for feat in (*features.multi_scale_features, features.mask_features):
            h = max(1, math.ceil(feat.shape[-2] * extent_fraction[0] - 1e-6))
            w = max(1, math.ceil(feat.shape[-1] * extent_fraction[1] - 1e-6))
            region = feat[..., :h, :w].float().flatten(2)  # [B, C, h*w]
            pooled += [region.mean(-1), region.std(-1, unbiased=False)]
        return torch.cat(pooled, -1)

    def set_domain_head(self, spaces: Sequence[str], weight: Tensor, bias: Tensor) -> None:
        """Install a fitted domain head: logits = weight · pooled_features + bias, one row per space."""
        unknown = [s for s in spaces if s not in self.label_spaces]
        if unknown or len(set(spaces)) != len(spaces) or len(spaces) < 2:
            raise ValueError(f"A domain head needs two or more distinct trained label spaces, got {list(spaces)}.")
        if tuple(weight.shape) != (len(spaces), self.pooled_dim()) or tuple(bias.shape) != (len(spaces),):
            raise ValueError(f"Domain head weights of shape {tuple(weight.shape)}/{tuple(bias.shape)} do not fit "
                             f"{len(spaces)} spaces x {self.pooled_dim()} features.")
        head = nn.Linear(self.pooled_dim(), len(spaces)).to(weight)
        with torch.no_grad():
            head.weight.copy_(weight)
            head.bias.copy_(bias)
        head.requires_grad_(False)  # fitted afterwards (train/domain.py), never by the training loss
        self.domain_head = head
        self.domain_spaces = list(spaces)
        # Inherited domains stay while they still name a domain of the head and the space has none of its own.
        self.space_domains = {s: d for s, d in self.space_domains.items() if d in spaces and s not in spaces}

    def set_space_domain(self, space: str, domain: str | None) -> None:
        """Let label space `space`, which the domain head does not know, inherit `domain` (one of
        `domain_spaces`) for domain-aware OMI; `None` removes its inherited domain."""
        if space not in self.label_spaces:
            raise ValueError(f"Unknown label space {space!r}; trained: {list(self.label_spaces)}.")
        if domain is None:
            self.space_domains.pop(space, None)
            return
        if space in self.domain_spaces:
            raise ValueError(f"Label space {space!r} has a domain of its own in the domain head.")
        if domain not in self.domain_spaces:
            raise ValueError(f"Domain {domain!r} is not one of the domain head's: {self.domain_spaces or 'no head'}.")
        self.space_domains[space] = domain

    def domain_probs(self, features: PixelFeatures, extent_fraction: tuple[float, float] = (1.0, 1.0)) -> Tensor:
        """[B, S] probability that each image comes from each of `domain_spaces`' training data."""
        if self.domain_head is None:
            raise ValueError("This model has no domain head; fit one with `python -m train domain-head`.")
        return self.pooled_domain_probs(self.pooled_features(features, extent_fraction))

    def pooled_domain_probs(self, pooled: Tensor) -> Tensor:
        """[B, F] pooled features (`pooled_features`) -> [B, S] probabilities over `domain_spaces`."""
        if self.domain_head is None:
            raise ValueError("This model has no domain head; fit one with `python -m train domain-head`.")
        return self.domain_head(pooled.to(self.domain_head.weight)).softmax(-1)

    def image_domain_probs(self, features: PixelFeatures, extent_fraction: tuple[float, float] = (1.0, 1.0)
                           ) -> dict[str, float]:
        """For one image (features of batch 1): its probability per space of `domain_spaces`."""
        return dict(zip(self.domain_spaces, self.domain_probs(features, extent_fraction)[0].tolist(), strict=True))

    # ----- calibration and familiarity ---------------------------------------------------------------
    def set_score_temperature(self, temperature: float) -> None:
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"The score temperature must be a positive number, got {temperature!r}.")
        self.score_temperature = float(temperature)

    def set_score_map(self, score_map: ScoreMap | None) -> None:
        self.score_map = score_map

    def set_familiarity(self, kinds: Sequence[str], means: Tensor, whitening: Tensor, threshold: float) -> None:
        """Install fitted familiarity statistics: per kind of familiar image (the world's scene kinds), the
        mean [K, F] and whitening [K, F, F] of pooled features, and the distance above which an image counts
        as unlike the training data."""
        dim, k = self.pooled_dim(), len(kinds)
        if not k or len(set(kinds)) != k:
            raise ValueError(f"Familiarity needs one or more distinct kinds of images, got {list(kinds)}.")
        if tuple(means.shape) != (k, dim) or tuple(whitening.shape) != (k, dim, dim):
            raise ValueError(f"Familiarity statistics of shape {tuple(means.shape)}/{tuple(whitening.shape)} do not "
                             f"fit {k} kinds x {dim} pooled features.")
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"The familiarity threshold must be a positive number, got {threshold!r}.")
        self.familiarity = Familiarity(kinds, means, whitening, threshold)

    def familiarity_distance(self, pooled: Tensor) -> Tensor:
        """[B, F] pooled features -> [B] distance to the nearest familiar kind (`Familiarity.distance`, about
        1 for images like the fitting ones); `familiarity.threshold` separates familiar from not."""
        if self.familiarity is None:
            raise ValueError("This model has no familiarity statistics; fit them with `python -m train calibrate`.")
        return self.familiarity.distance(pooled)

    def query_set(self, name: str) -> nn.Parameter:
        """[Q, D] content queries for a label space (any name maps to the shared set in shared mode)."""
        if self.config.query_mode == "shared":
            return self.query_sets[0]
        if name not in self.label_spaces:
            raise KeyError(f"Unknown label space {name!r}; trained: {list(self.label_spaces)}.")
        return self.query_sets[self.query_set_names.index(name)]

    def decode(self, features: PixelFeatures, query_sets: Sequence[str]) -> DecoderOutput:
        """Run the transformer decoder once with k query sets stacked on the batch axis.

        `features` has batch 1 (shared by every set, expanded without copying) or batch k.
        """
        k = len(query_sets)
        if k == 0:
            raise ValueError("decode() needs at least one query set.")
        if features.batch_size not in (1, k):
            raise ValueError(f"Features have batch {features.batch_size}; expected 1 or {k} (one per query set).")
        transformer = self.mask2former.transformer_module
        pos_embeds, level_feats, sizes = [], [], []
        for i in range(transformer.num_feature_levels):
            feat = features.multi_scale_features[i]
            sizes.append(feat.shape[-2:])
            pos = transformer.position_embedder(feat.shape, feat.device, feat.dtype, None).flatten(2)
            proj = transformer.input_projections[i](feat).flatten(2) + transformer.level_embed.weight[i][None, :, None]
            pos_embeds.append(pos.permute(2, 0, 1).expand(-1, k, -1))  # [h_i*w_i, k, D]
            level_feats.append(proj.permute(2, 0, 1).expand(-1, k, -1))  # [h_i*w_i, k, D]
        mask_features = features.mask_features.expand(k, -1, -1, -1)  # [k, C, h, w]
        content = torch.stack([self.query_set(name) for name in query_sets], dim=1)  # [Q, k, D]
        positions = transformer.queries_embedder.weight[:, None].expand(-1, k, -1)  # [Q, k, D]
        out = transformer.decoder(
            inputs_embeds=content,
            multi_stage_positional_embeddings=pos_embeds,
            pixel_embeddings=mask_features,
            encoder_hidden_states=level_feats,
            query_position_embeddings=positions,
            feature_size_list=sizes,
            return_dict=True,
        )
        hidden = torch.stack(out.intermediate_hidden_states).transpose(1, 2)  # [L+1, k, Q, D]
        masks = torch.stack(out.masks_queries_logits)  # [L+1, k, Q, h, w]
        return DecoderOutput(hidden_states=hidden, masks_queries_logits=masks)

    def forward(self, pixel_values: Tensor, query_sets: Sequence[str]) -> DecoderOutput:
        """Training pass: image b is decoded with query set query_sets[b]."""
        if pixel_values.shape[0] != len(query_sets):
            raise ValueError("forward() takes one query set per image.")
        return self.decode(self.encode(pixel_values), query_sets)

    # ----- new label spaces (LSQE fine-tuning) -------------------------------------------------------
    def add_label_space(self, space: LabelSpace, text_encoder, temperature: float = 0.1) -> dict[str, float]:
        """Add a label space; E_new = sum_l w_l E_l with w = softmax_l(mean best similarity / temperature).

        The temperature is this project's choice: raw cosine similarities differ little, and an
        untempered softmax would give nearly uniform weights. Returns the weights per trained space.
        """
        if self.config.classifier != "text" or self.config.query_mode != "per_space":
            raise ValueError("Adding a label space needs the text classifier and per-space queries.")
        if space.name in self.label_spaces:
            raise ValueError(f"Label space {space.name!r} already exists.")
        if text_encoder.id != self.config.text_encoder:
            raise ValueError(f"Text encoder {text_encoder.id!r} differs from the model's {self.config.text_encoder!r}.")
        new_emb = text_encoder.encode(space.class_names).to(self.query_sets[0])  # [K_new, Dt]
        trained = list(self.label_spaces)
        scores = torch.stack(
            [(new_emb @ self.class_embeddings(name).to(new_emb).T).max(dim=1).values.mean() for name in trained]
        )  # [S]
        weights = torch.softmax(scores / temperature, dim=0)  # [S]
        with torch.no_grad():
            stacked = torch.stack([self.query_set(name) for name in trained])  # [S, Q, D]
            init = torch.einsum("s,sqd->qd", weights, stacked)  # [Q, D]
        self.label_spaces[space.name] = space
        self.query_set_names.append(space.name)
        self.query_sets.append(nn.Parameter(init.clone()))
        self._set_class_buffer(len(self.label_spaces) - 1, new_emb)
        self._rebuild_union()
        return dict(zip(trained, weights.tolist(), strict=True))

    def freeze_all_but(self, space: str) -> list[nn.Parameter]:
        """Freeze every parameter except the query set of `space`; returns the trainable ones."""
        target = self.query_set(space)
        for param in self.parameters():
            param.requires_grad_(param is target)
        return [target]


@dataclass(frozen=True)
class ScoreMap:
    """A monotone piecewise-linear map of scores in [0, 1] (after temperature scaling) to calibrated ones:
    linear between the knots (`scores[i]`, `calibrated[i]`), flat beyond the first and last. Fitted by
    `python -m train calibrate` (centred isotonic regression); it keeps the order of any two scores
    between the outer knots."""

    scores: tuple[float, ...]
    calibrated: tuple[float, ...]

    def __post_init__(self) -> None:
        xs, ys = self.scores, self.calibrated
        if len(xs) != len(ys) or len(xs) < 2:
            raise ValueError(f"A score map needs two or more knots with one calibrated score each, got "
                             f"{len(xs)} and {len(ys)}.")
        if not all(isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in xs + ys):
            raise ValueError("A score map's knots must be numbers from 0 to 1.")
        if any(b <= a for a, b in zip(xs, xs[1:], strict=False)) or any(b < a for a, b in zip(ys, ys[1:], strict=False)):
            raise ValueError("A score map's scores must increase and its calibrated scores must not decrease.")

    def __call__(self, score: float) -> float:
        return float(np.interp(score, self.scores, self.calibrated))

    def to_json(self) -> dict[str, list[float]]:
        return {"scores": list(self.scores), "calibrated": list(self.calibrated)}

    @classmethod
    def from_json(cls, data: Any) -> ScoreMap:
        if not isinstance(data, dict) or not isinstance(data.get("scores"), list) or not isinstance(
                data.get("calibrated"), list):
            raise ValueError(f"score_map must be {{'scores': [...], 'calibrated': [...]}}, got {data!r}")
        return cls(tuple(data["scores"]), tuple(data["calibrated"]))


class Familiarity(nn.Module):
    """Gaussian models of the pooled features of familiar images, one per kind (a class-conditional
    Mahalanobis distance, Lee et al. 2018, with the world's scene kinds as the classes).

    means [K, F] and whitening [K, F, F] (per kind, the inverse Cholesky factor of the shrunk covariance,
    so that whitening · (x − mean) has unit covariance on that kind's fitting images) are buffers, saved
    with the weights; kinds and threshold are checkpoint metadata."""

    def __init__(self, kinds: Sequence[str], means: Tensor, whitening: Tensor, threshold: float) -> None:
        super().__init__()
        self.kinds = list(kinds)
        self.register_buffer("means", means.detach().float().clone())
        self.register_buffer("whitening", whitening.detach().float().clone())
        self.threshold = float(threshold)

    def distance(self, pooled: Tensor) -> Tensor:
        """[B, F] -> [B]: min over kinds of sqrt(mean over features of (whitening_k · (x − mean_k))²)."""
        centered = pooled.to(self.means)[:, None] - self.means  # [B, K, F]
        whitened = torch.einsum("kgf,bkf->bkg", self.whitening, centered)  # [B, K, F]
        return whitened.pow(2).mean(-1).sqrt().min(-1).values  # [B]
