"""RESIConfig: every architecture and loss setting of a RESI model, as one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

CLASSIFIERS = ("text", "linear")
QUERY_MODES = ("per_space", "shared")
NEGATIVES = ("own_space", "all_spaces")
BACKBONE_NORMS = ("group", "frozen_batch")


@dataclass(frozen=True)
class RESIConfig:
    # Backbone: a ResNet-style network built from scratch (transformers ResNetConfig). BatchNorm is
    # replaced (see backbone_norm) because batches grouped by dataset show it one domain at a time.
    backbone_stem: int = 32
    backbone_channels: tuple[int, ...] = (32, 64, 96, 128)
    backbone_depths: tuple[int, ...] = (1, 1, 1, 1)
    backbone_norm: str = "group"
    # Pixel decoder and transformer decoder. feature_size must be a multiple of 32 (GroupNorm(32, .)).
    hidden_size: int = 64
    feature_size: int = 64
    mask_feature_size: int = 64
    encoder_layers: int = 2
    # The real number of decoder layers L; outputs have L + 1 steps (the prediction before layer 1).
    decoder_layers: int = 3
    num_heads: int = 4
    dim_feedforward: int = 128
    encoder_feedforward_dim: int = 128
    num_queries: int = 16  # per label space
    # Classification.
    text_encoder: str = "minilm"
    text_dim: int = 384
    classifier: str = "text"  # "text": cosine vs class-name embeddings; "linear": union head
    query_mode: str = "per_space"  # "per_space": one LSQE per label space; "shared": one query set
    # "own_space": a sample's softmax runs over its own space's classes + no-object (RESI, Text-M2F);
    # "all_spaces": over the union of all class names (Merged-M2F: other spaces' classes are negatives).
    negatives: str = "own_space"
    # Loss (SPEC §3): matching cost and loss weights, no-object weight, sampled points.
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    train_num_points: int = 1024
    # Input size: the longer image side at inference and the training crop size.
    max_size: int = 128
    # Inference scales images whose long side is below max_size up to it, as training always does (a
    # 128 px world image runs at 256 px in a 256 px model). False keeps small images at their size.
    upscale: bool = False
    # Hub id or local folder for Mask2FormerModel.from_pretrained; None builds from the fields above.
    pretrained: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.classifier in CLASSIFIERS, f"classifier must be one of {CLASSIFIERS}"),
            (self.query_mode in QUERY_MODES, f"query_mode must be one of {QUERY_MODES}"),
            (self.negatives in NEGATIVES, f"negatives must be one of {NEGATIVES}"),
            (self.backbone_norm in BACKBONE_NORMS, f"backbone_norm must be one of {BACKBONE_NORMS}"),
            (self.feature_size % 32 == 0, "feature_size must be a multiple of 32"),
            (self.decoder_layers >= 1, "decoder_layers must be >= 1"),
            (self.max_size % 32 == 0, "max_size must be a multiple of 32"),
            (len(self.backbone_channels) == 4 == len(self.backbone_depths), "the backbone has 4 stages"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"RESIConfig: {message}.")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(data: dict[str, Any]) -> RESIConfig:
        values = known_fields(RESIConfig, data, "model config")
        return RESIConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def known_fields(cls: type, data: dict[str, Any], what: str, ignored: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The entries of JSON `data` that are fields of dataclass `cls`; any other key (except `ignored`)
    is a ValueError naming it, so a typo in a config file is never silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names - ignored
    if unknown:
        raise ValueError(f"Unknown {what} keys {sorted(unknown)}; known: {sorted(names)}.")
    return {k: v for k, v in data.items() if k in names}


def merged_m2f(config: RESIConfig) -> RESIConfig:
    """Baseline: a linear head over the union of class names and one shared query set."""
    return dataclasses.replace(config, classifier="linear", query_mode="shared", negatives="all_spaces")


def text_m2f(config: RESIConfig) -> RESIConfig:
    """Baseline: the text classifier with a per-image softmax over its own space, one query set."""
    return dataclasses.replace(config, classifier="text", query_mode="shared", negatives="own_space")


def resi(config: RESIConfig) -> RESIConfig:
    return dataclasses.replace(config, classifier="text", query_mode="per_space", negatives="own_space")


def resi_linear_ablation(config: RESIConfig) -> RESIConfig:
    """Ablation: RESI's per-space queries with a linear head (restricted to each space's columns)."""
    return dataclasses.replace(config, classifier="linear", query_mode="per_space", negatives="own_space")


METHODS = {"resi": resi, "merged_m2f": merged_m2f, "text_m2f": text_m2f, "resi_linear": resi_linear_ablation}
