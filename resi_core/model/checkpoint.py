"""RESI checkpoints: a folder with `model.safetensors` (weights, incl. class embeddings and LSQEs)
and `meta.json` (format version, label spaces, text encoder, config, code version, training info).

Nothing is unpickled: weights load through safetensors, metadata through json.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

from resi_core.labels import LabelSpace
from resi_core.model.build import build_mask2former, quiet_transformers
from resi_core.model.config import RESIConfig
from resi_core.model.resi import RESIModel, ScoreMap

FORMAT = "resi-checkpoint"
VERSION = 1
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, other version or other text encoder."""


def current_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file owner-only, and safetensors writes a new file; a checkpoint is shared
        # with the team, so it is made readable after writing.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_CURRENT = object()


def save_checkpoint(
    path_dir: str | Path, model: RESIModel, meta: dict[str, Any] | None = None, git_commit: Any = _CURRENT
) -> Path:
    """Write `model.safetensors` and then `meta.json` into `path_dir` (each atomically).

    `git_commit` defaults to the code's current commit; pass the original one when rewriting a
    checkpoint without retraining it."""
    from safetensors.torch import save_file

    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(path_dir / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    record = {
        "format": FORMAT,
        "version": VERSION,
        "text_encoder": model.config.text_encoder,
        "label_spaces": [space.to_json() for space in model.label_spaces.values()],
        "config": model.config.to_json(),
        "mask2former_config": model.mask2former.config.to_dict(),
        "git_commit": current_commit() if git_commit is _CURRENT else git_commit,
        "domain_spaces": list(model.domain_spaces),
        "space_domains": dict(model.space_domains),
        "score_temperature": model.score_temperature,
        "score_map": None if model.score_map is None else model.score_map.to_json(),
        "familiarity_threshold": None if model.familiarity is None else model.familiarity.threshold,
        "familiarity_kinds": [] if model.familiarity is None else list(model.familiarity.kinds),
        "training": meta or {},
    }
    text = json.dumps(record, indent=2)
    _atomic_write(path_dir / META_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path_dir


def read_meta(path: str | Path) -> dict[str, Any]:
    """The checked metadata of a checkpoint folder (or of the folder holding `model.safetensors`)."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{folder} is not a RESI checkpoint: {META_FILE} is missing.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path} is unreadable or corrupt: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not RESI checkpoint metadata.")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{meta_path} has checkpoint format version {meta.get('version')!r}; this code reads version {VERSION}."
        )
    for key, kind in (("text_encoder", str), ("label_spaces", list), ("config", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_path} is damaged: {key!r} is missing or not a {kind.__name__}.")
    if not all(isinstance(space, dict) and isinstance(space.get("name"), str) for space in meta["label_spaces"]):
        raise CheckpointError(f"{meta_path} is damaged: every label space needs a name.")
    return meta


def load_checkpoint(
    path: str | Path, text_encoder_id: str | None = None, map_location: str | torch.device = "cpu"
) -> RESIModel:
    """Rebuild a RESIModel from a checkpoint folder; raise CheckpointError with a clear reason.

    With `text_encoder_id`, the checkpoint must have been trained with that text encoder.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import Mask2FormerConfig

    folder = Path(path).parent if Path(path).is_file() else Path(path)
    meta = read_meta(folder)
    if text_encoder_id is not None and meta["text_encoder"] != text_encoder_id:
        raise CheckpointError(
            f"Checkpoint {folder} was trained with text encoder {meta['text_encoder']!r}, not {text_encoder_id!r}; "
            "class embeddings of different encoders are not comparable."
        )
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"Checkpoint {folder} has no {WEIGHTS_FILE}.")
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights_path} is corrupt or truncated: {err}") from err
    quiet_transformers()
    try:
        config = RESIConfig.from_json(meta["config"])
        spaces = [LabelSpace.from_json(s) for s in meta["label_spaces"]]
        m2f_config = Mask2FormerConfig.from_dict(meta["mask2former_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / META_FILE} has invalid contents: {err}") from err

    class_embeddings = None
    if config.classifier == "text":
        class_embeddings = {s.name: torch.zeros(len(s.classes), config.text_dim) for s in spaces}
    model = RESIModel(
        config=config,
        mask2former=build_mask2former(config, m2f_config=m2f_config),
        label_spaces=spaces,
        class_embeddings=class_embeddings,
    )
    domain_spaces = meta.get("domain_spaces") or []
    if not isinstance(domain_spaces, list) or not all(isinstance(s, str) for s in domain_spaces):
        raise CheckpointError(f"{folder / META_FILE} has invalid contents: domain_spaces must be a list of names.")
    if not domain_spaces:  # head weights that meta.json does not list (an interrupted rewrite) are ignored
        state = {k: v for k, v in state.items() if not k.startswith("domain_head.")}
    # Absent in checkpoints saved before `train calibrate` existed: no calibration, no familiarity.
    temperature, threshold = meta.get("score_temperature", 1.0), meta.get("familiarity_threshold")
    if threshold is None:  # statistics that meta.json does not list are ignored, as the head's are
        state = {k: v for k, v in state.items() if not k.startswith("familiarity.")}
    try:
        if domain_spaces:  # shapes are checked here; the values come with load_state_dict
            model.set_domain_head(domain_spaces, torch.zeros(len(domain_spaces), model.pooled_dim()),
                                  torch.zeros(len(domain_spaces)))
        if not isinstance(temperature, int | float) or isinstance(temperature, bool):
            raise ValueError(f"score_temperature must be a number, got {temperature!r}")
        model.set_score_temperature(float(temperature))
        if meta.get("score_map") is not None:  # absent before the map existed: temperature only
            model.set_score_map(ScoreMap.from_json(meta["score_map"]))
        if threshold is not None:
            kinds = meta.get("familiarity_kinds")
            if not isinstance(threshold, int | float) or isinstance(threshold, bool):
                raise ValueError(f"familiarity_threshold must be a number, got {threshold!r}")
            if not isinstance(kinds, list) or not all(isinstance(k, str) for k in kinds):
                raise ValueError(f"familiarity_kinds must be a list of names, got {kinds!r}")
            dim = model.pooled_dim()
            model.set_familiarity(kinds, torch.zeros(len(kinds), dim), torch.zeros(len(kinds), dim, dim),
                                  float(threshold))
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as err:
        raise CheckpointError(f"{weights_path} does not match its metadata: {err}") from err
    space_domains = meta.get("space_domains") or {}  # absent in checkpoints saved before finetune recorded it
    if not isinstance(space_domains, dict) or not all(isinstance(d, str) for d in space_domains.values()):
        raise CheckpointError(f"{folder / META_FILE} has invalid contents: space_domains must map label space "
                              "names to domain names.")
    try:
        for space, domain in space_domains.items():
            model.set_space_domain(space, domain)
    except ValueError as err:
        raise CheckpointError(f"{folder / META_FILE} has invalid contents: space_domains: {err}") from err
    return model.to(map_location)
