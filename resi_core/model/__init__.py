"""The RESI model: Mask2Former with a text classifier and label-space query embeddings (SPEC §3)."""

from resi_core.model.build import build_model
from resi_core.model.checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from resi_core.model.config import METHODS, RESIConfig
from resi_core.model.criterion import LossOutput, RESICriterion, Target
from resi_core.model.resi import DecoderOutput, PixelFeatures, RESIModel, ScoreMap

__all__ = [
    "METHODS",
    "CheckpointError",
    "DecoderOutput",
    "LossOutput",
    "PixelFeatures",
    "RESIConfig",
    "RESICriterion",
    "RESIModel",
    "ScoreMap",
    "Target",
    "build_model",
    "load_checkpoint",
    "read_meta",
    "save_checkpoint",
]
