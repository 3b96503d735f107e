"""The one place that reads a RESIConfig and assembles a RESIModel from its parts."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from resi_core.labels import LabelSpace
from resi_core.model.config import RESIConfig
from resi_core.model.resi import RESIModel


def mask2former_config(config: RESIConfig):
    """The transformers Mask2FormerConfig of a from-scratch RESI model (small ResNet backbone)."""
    from transformers import Mask2FormerConfig, ResNetConfig

    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=config.backbone_stem,
        hidden_sizes=list(config.backbone_channels),
        depths=list(config.backbone_depths),
        layer_type="basic",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    return Mask2FormerConfig(
        backbone_config=backbone,
        feature_size=config.feature_size,
        mask_feature_size=config.mask_feature_size,
        hidden_dim=config.hidden_size,
        encoder_layers=config.encoder_layers,
        decoder_layers=config.decoder_layers + 1,  # transformers builds decoder_layers - 1 layers
        num_attention_heads=config.num_heads,
        dim_feedforward=config.dim_feedforward,
        encoder_feedforward_dim=config.encoder_feedforward_dim,
        num_queries=config.num_queries,
        dropout=0.0,  # transformers also uses dropout as decoder layer-drop, which would skip steps
        train_num_points=config.train_num_points,
        class_weight=config.class_weight,
        mask_weight=config.mask_weight,
        dice_weight=config.dice_weight,
        no_object_weight=config.no_object_weight,
    )


def _group_count(channels: int, most: int = 32) -> int:
    return max(g for g in range(1, most + 1) if channels % g == 0)


def replace_batchnorm(module: nn.Module, kind: str) -> None:
    """Swap every BatchNorm2d in `module` for GroupNorm ("group") or FrozenBatchNorm2d ("frozen_batch").

    Frozen BN keeps pretrained statistics; GroupNorm is for backbones trained from scratch.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            if kind == "group":
                new: nn.Module = nn.GroupNorm(_group_count(child.num_features), child.num_features)
            else:
                new = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(new, key).copy_(getattr(child, key).detach())
            setattr(module, name, new)
        else:
            replace_batchnorm(child, kind)


def quiet_transformers() -> None:
    # "Backbone resnet is not a supported model" is expected: the ResNet backbone works.
    logging.getLogger("transformers.models.mask2former.configuration_mask2former").setLevel(logging.ERROR)


def build_mask2former(config: RESIConfig, m2f_config=None) -> nn.Module:
    """A transformers Mask2FormerModel: from `config.pretrained`, from a saved config, or from scratch."""
    from transformers import Mask2FormerModel

    quiet_transformers()
    if m2f_config is not None:
        model = Mask2FormerModel(m2f_config)
    elif config.pretrained:
        model = Mask2FormerModel.from_pretrained(config.pretrained)
        loaded = model.config
        if loaded.hidden_dim != config.hidden_size or loaded.num_queries != config.num_queries:
            raise ValueError(
                f"Pretrained Mask2Former {config.pretrained!r} has hidden size {loaded.hidden_dim} and "
                f"{loaded.num_queries} queries; set hidden_size and num_queries to match."
            )
        if loaded.decoder_layers - 1 != config.decoder_layers:
            raise ValueError(f"Pretrained decoder has {loaded.decoder_layers - 1} layers; set decoder_layers to match.")
    else:
        model = Mask2FormerModel(mask2former_config(config))
    replace_batchnorm(model.pixel_level_module.encoder, config.backbone_norm)
    return model


def build_model(config: RESIConfig, label_spaces: Sequence[LabelSpace], text_encoder) -> RESIModel:
    """A RESI model for `label_spaces`; class embeddings come from `text_encoder` (text classifier)."""
    class_embeddings = None
    if config.classifier == "text":
        if text_encoder is None:
            raise ValueError("The text classifier needs a text encoder.")
        if text_encoder.id != config.text_encoder or text_encoder.dim != config.text_dim:
            raise ValueError(
                f"Text encoder {text_encoder.id!r} ({text_encoder.dim}-d) does not match the config's "
                f"{config.text_encoder!r} ({config.text_dim}-d)."
            )
        with torch.no_grad():
            class_embeddings = {s.name: text_encoder.encode(s.class_names) for s in label_spaces}
    mask2former = build_mask2former(config)
    return RESIModel(
        config=config,
        mask2former=mask2former,
        label_spaces=label_spaces,
        class_embeddings=class_embeddings,
    )
