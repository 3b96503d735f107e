"""Predictor: numpy image in, segments out, with the pixel features cached by image hash.

Layering as in segment-anything: the model (`RESIModel`) computes tensors; this class
converts the image, caches `model.encode`, runs one batched `model.decode` for all query
sets, classifies, and calls the pure functions of `postprocess` (OMI per pass, then ESF).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from formats.images import ImageLike, to_rgb_uint8
from resi_core.image_io import ResizeInfo, image_hash, resize_for_model, to_pixel_values
from resi_core.labels import LabelError, LabelSpace, MixedLabelSpace, adhoc_space, mix, space_domain
from resi_core.postprocess import (
    RawSegment,
    esf_fuse,
    instance_list,
    omi_panoptic,
    rescore,
    semantic_inference,
    semantic_union,
    upscale_segments,
    working_size,
)
from resi_core.segment import Segment, Source, segment_id

# Post-processing's working resolution (long side): more than 5x the mask grid of a model run at 1,024
# pixels, so upsampling its result moves a boundary by under a pixel of that grid.
POSTPROCESS_MAX_SIDE = 1536

# What the app and the CLI say about an image that the familiarity check flags (Prediction.notice).
UNFAMILIAR_NOTICE = (
    "This photo looks unlike anything the model was trained on; its proposals are hidden below the score "
    "threshold, because they are likely to be wrong. Lower the threshold to see them, or draw from scratch."
)


class RequestError(ValueError):
    """A request a user can get wrong: no classes, an unknown label space, duplicates."""


@dataclass(frozen=True)
class SpacesRequest:
    """Segment with the classes of trained label spaces; `synonyms` are declared-equal class pairs."""

    spaces: tuple[str, ...]
    synonyms: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class AdHocRequest:
    """Segment with typed class names, run through `query_sets` (default: every trained set)."""

    class_names: tuple[str, ...]
    query_sets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class MixedRequest:
    """Trained label spaces AND typed class names in one ask, so ESF fuses duplicates across them
    (a typed "car" and street's "car" become one segment). The typed names run through `query_sets`
    (default: every trained set); `synonyms` may pair names from any of them."""

    spaces: tuple[str, ...]
    class_names: tuple[str, ...]
    synonyms: tuple[tuple[str, str], ...] = ()
    query_sets: tuple[str, ...] | None = None


Request = SpacesRequest | AdHocRequest | MixedRequest


def class_set_request(trained: Mapping[str, LabelSpace], spaces: Sequence[str], adhoc: Sequence[str],
                      synonyms: Sequence[tuple[str, str]] = ()) -> Request:
    """The request for a project's class set (trained label spaces, typed names, declared synonyms).

    Trained spaces and typed names go in one request, so a typed class that a trained space also has
    ("car" and street's "car") is fused into one segment; synonyms between names the request does
    not have are dropped (a class set may outlive a model). Raises RequestError for a label space
    the model lacks (it was learned by another model version) or an empty class set.
    """
    missing = [s for s in spaces if s not in trained]
    if missing:
        raise RequestError(f"The model has no label space {', '.join(map(repr, missing))}; it has "
                           f"{', '.join(trained) or 'none'}.")
    if not spaces and not adhoc:
        raise RequestError("The class set is empty: pick a label space or type class names.")
    known = {c.name for s in spaces for c in trained[s].classes} | set(adhoc)
    kept = tuple((a, b) for a, b in synonyms if a in known and b in known)
    if spaces and adhoc:
        return MixedRequest(tuple(spaces), tuple(adhoc), kept)
    if spaces:
        return SpacesRequest(tuple(spaces), kept)
    return AdHocRequest(tuple(adhoc))


@dataclass(frozen=True)
class Prediction:
    """segments: ESF-OMI output (non-overlapping within a pass, overlapping across passes);
    instances: the scored overlapping top-k list per pass, thing classes only (for AP);
    timings: seconds per stage; cache_hit: whether the pixel features came from the cache."""

    segments: list[Segment]
    instances: list[Segment]
    timings: dict[str, float]
    mixed: MixedLabelSpace
    image_hash: str
    cache_hit: bool
    # Domain-aware OMI: the domain head's probability per trained label space, and the chosen trained
    # label spaces that were held to the out-of-domain threshold (both empty when it did not apply).
    domain_probs: dict[str, float] = dataclasses.field(default_factory=dict)
    out_of_domain: tuple[str, ...] = ()
    # `predict(..., with_semantic=True)`: one segment per class, the union of every pass's semantic map
    # (Mask2Former's semantic inference per pass; what mIoU is scored on). Empty otherwise.
    semantic: list[Segment] = dataclasses.field(default_factory=list)
    # Familiarity (docs/MODEL.md): how far the image's pooled features lie from the world's images (None
    # when the model has no familiarity statistics), whether that is beyond the fitted threshold, and
    # then a plain-words notice for the user (UNFAMILIAR_NOTICE; "" otherwise).
    familiarity_distance: float | None = None
    unfamiliar: bool = False
    notice: str = ""


@dataclass(frozen=True, eq=False)
class _Pass:
    """One decoder pass: the query set that runs and the label space it classifies against.

    adhoc_embeddings [K, Dt]: the ad-hoc classes' text embeddings; None for a trained space,
    which the model classifies itself (`space_logits`, text or linear head).
    """

    query_set: str
    space: LabelSpace
    adhoc_embeddings: torch.Tensor | None = None


class Predictor:
    """Runs a RESIModel on single images.

    model: a RESIModel (encode / decode / space_logits / class_logits / label_spaces /
    config.max_size); text_encoder: embeds ad-hoc class names (`encode(names) -> [K, Dt]`);
    it must be the encoder the model was trained with (None: trained label spaces only).
    The model is moved to `device` and put in eval mode. Features of the last `cache_size`
    images are kept, keyed by the image's hash, so asking the same image again with other
    classes skips the backbone and pixel decoder. Call `clear_cache` after changing weights.
    Post-processing works at a long side of at most `postprocess_max_side` pixels (None: the
    image's own size) and the final masks are upsampled once (`postprocess.upscale_segments`):
    an image that fits is worked on at its own size, exactly as before; a 24 MP photo costs a
    fraction of what full-resolution post-processing did.
    """

    def __init__(
        self,
        model: Any,
        text_encoder: Any | None,
        *,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        overlap_threshold: float = 0.8,
        iou_threshold: float = 0.5,
        semantic_threshold: float = 0.5,
        topk: int = 100,
        cache_size: int = 32,
        max_size: int | None = None,
        size_divisor: int = 32,
        out_of_domain_threshold: float | None = 0.98,
        postprocess_max_side: int | None = POSTPROCESS_MAX_SIDE,
    ) -> None:
        trained_with = getattr(model.config, "text_encoder", None)
        if text_encoder is not None and trained_with is not None and text_encoder.id != trained_with:
            raise ValueError(
                f"The model was trained with text encoder {trained_with!r}, not {text_encoder.id!r}."
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.text_encoder = text_encoder
        self.score_threshold = score_threshold
        self.overlap_threshold = overlap_threshold
        self.iou_threshold = iou_threshold
        self.semantic_threshold = semantic_threshold
        self.topk = topk
        self.cache_size = cache_size
        self.max_size = max_size if max_size is not None else int(model.config.max_size)
        self.upscale = bool(getattr(model.config, "upscale", False))  # as the model was trained (RESIConfig)
        self.size_divisor = size_divisor
        self.out_of_domain_threshold = out_of_domain_threshold
        self.postprocess_max_side = postprocess_max_side
        self._cache: OrderedDict[str, tuple[Any, ResizeInfo]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def label_spaces(self) -> dict[str, LabelSpace]:
        return dict(self.model.label_spaces)

    def mixed_space(self, request: Request) -> MixedLabelSpace:
        """The mixed label space `request` classifies over (its class order is the segments' class order);
        raises RequestError for a bad request, as `predict` would."""
        return self._resolve(request)[1]

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    @torch.inference_mode()
    def predict(
        self, image: ImageLike, request: Request, *, with_instances: bool = True, with_semantic: bool = False
    ) -> Prediction:
        """Segment `image` (array or PIL image; see `formats.images.to_rgb_uint8`) for `request`.

        Masks are bool HxW at the image's own resolution, whatever size the model ran at.
        `with_instances=False` skips the AP instance list (it holds up to `topk` full-size
        masks per pass), leaving `Prediction.instances` empty. `with_semantic=True` also runs
        Mask2Former's semantic inference in every pass (pixels whose best class scores below
        `semantic_threshold` stay unlabeled; a pass held back by domain-aware OMI counts only its
        queries above its threshold) and unions the passes per class into `Prediction.semantic`.
        Raises RequestError for a bad request and formats.images.ImageError for a bad image.
        """
        start = time.perf_counter()
        passes, mixed = self._resolve(request)
        rgb = to_rgb_uint8(image)
        key = image_hash(rgb)
        timings = {"hash": time.perf_counter() - start}

        tick = time.perf_counter()
        features, info, cache_hit = self._features(rgb, key)
        timings["encode"] = time.perf_counter() - tick

        tick = time.perf_counter()
        output = self.model.decode(features, [p.query_set for p in passes])
        hidden = output.hidden_states[-1]  # [k, Q, D]
        mask_logits = output.masks_queries_logits[-1]  # [k, Q, h, w]
        timings["decode"] = time.perf_counter() - tick

        tick = time.perf_counter()
        domain_probs, thresholds, held = self._pass_thresholds(features, info, passes)
        distance = self._familiarity_distance(features, info)
        unfamiliar = distance is not None and distance > self.model.familiarity.threshold
        temperature = float(getattr(self.model, "score_temperature", 1.0))
        extent = info.valid_extent(tuple(mask_logits.shape[-2:]))
        work_hw = working_size(info.original_hw, self.postprocess_max_side)
        per_pass: list[list[Segment]] = []
        instances: list[Segment] = []
        semantic: list[list[Segment]] = []
        for i, p in enumerate(passes):
            if p.adhoc_embeddings is None:
                logits = self.model.space_logits(hidden[i], p.space.name)  # [Q, K + 1]
            else:
                logits = self.model.class_logits(hidden[i], p.adhoc_embeddings)  # [Q, K + 1]
            probs = logits.float().softmax(-1)
            isthing = [c.isthing for c in p.space.classes]
            raw = omi_panoptic(
                mask_logits[i],
                probs,
                isthing,
                work_hw,
                extent,
                thresholds[i],
                self.overlap_threshold,
            )
            if temperature != 1.0:  # calibrated scores (temperature scaling); the segments stay the same
                raw = rescore(raw, (logits.float() / temperature).softmax(-1))
            per_pass.append(self._name(raw, p, mixed, key, "segment"))
            if with_instances:
                raw = instance_list(mask_logits[i], probs, work_hw, extent, self.topk, isthing)
                instances.extend(self._name(raw, p, mixed, key, "instance"))
            if with_semantic:
                min_score = thresholds[i] if thresholds[i] > self.score_threshold else None  # held pass
                raw = semantic_inference(
                    mask_logits[i], probs, work_hw, extent, self.semantic_threshold, min_score
                )
                semantic.append(self._name(raw, p, mixed, key, "semantic"))
        segments = esf_fuse(per_pass, mixed, self.iou_threshold)
        instances.sort(key=lambda s: -s.score)
        union = semantic_union(semantic, mixed)
        timings["postprocess"] = time.perf_counter() - tick

        tick = time.perf_counter()  # one upsampling of the final masks (nothing to do when work_hw is the image's)
        segments = upscale_segments(segments, info.original_hw)
        instances = upscale_segments(instances, info.original_hw)
        union = upscale_segments(union, info.original_hw)
        timings["upsample"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        return Prediction(
            segments, instances, timings, mixed, key, cache_hit, domain_probs, held, union,
            distance, unfamiliar, UNFAMILIAR_NOTICE if unfamiliar else "",
        )

    def _familiarity_distance(self, features: Any, info: ResizeInfo) -> float | None:
        """The image's familiarity distance (`RESIModel.familiarity_distance`), None without statistics."""
        if getattr(self.model, "familiarity", None) is None:
            return None
        pooled = self.model.pooled_features(features, info.valid_fraction)  # [1, F]
        return float(self.model.familiarity_distance(pooled)[0])

    def _pass_thresholds(
        self, features: Any, info: ResizeInfo, passes: Sequence[_Pass]
    ) -> tuple[dict[str, float], list[float], tuple[str, ...]]:
        """Domain-aware OMI: the score threshold of each pass for this image.

        A pass's domain is its query set when the fitted domain head knows that set, else the domain
        the set inherited (`model.space_domains`: a label space added later by `train finetune` whose
        training images looked like one trained space's), else none. Passes of trained label spaces and
        passes of typed names are two groups. In a group whose passes span two or more domains, the
        passes of the domain this image most resembles keep `score_threshold` and the group's passes of
        other domains are held to `out_of_domain_threshold`; passes of one domain (street and a new
        street-like space) are kept alike. So a chosen space is never held because of the query sets
        that typed names run through. Passes without a domain always keep `score_threshold`.
        Returns (domain probabilities, threshold per pass, the held trained label spaces).
        """
        thresholds = [self.score_threshold] * len(passes)
        if self.out_of_domain_threshold is None or getattr(self.model, "domain_head", None) is None:
            return {}, thresholds, ()
        head_sets = list(getattr(self.model, "domain_spaces", []))
        inherited = getattr(self.model, "space_domains", {})
        groups: dict[bool, list[tuple[int, str]]] = {True: [], False: []}  # trained / typed: (pass, domain)
        for i, p in enumerate(passes):
            domain = space_domain(p.query_set, head_sets, inherited)
            if domain in head_sets:
                groups[p.adhoc_embeddings is None].append((i, domain))
        contested = [g for g in groups.values() if len({d for _, d in g}) > 1]
        if not contested:
            return {}, thresholds, ()
        domain_probs = self.model.image_domain_probs(features, info.valid_fraction)
        held: list[str] = []
        for members in contested:
            likeliest = max((d for _, d in members), key=domain_probs.__getitem__)  # ties: the first pass's
            for i, domain in members:
                if domain != likeliest:
                    thresholds[i] = max(self.score_threshold, self.out_of_domain_threshold)
                    if passes[i].adhoc_embeddings is None:
                        held.append(passes[i].query_set)
        return domain_probs, thresholds, tuple(held)

    def _resolve(self, request: Request) -> tuple[list[_Pass], MixedLabelSpace]:
        """Check the request; return its decoder passes and its mixed label space."""
        trained = self.label_spaces
        if isinstance(request, SpacesRequest):
            names = self._check_spaces(request.spaces, trained, what="label space")
            spaces = [trained[n] for n in names]
            try:
                mixed = mix(spaces, request.synonyms)
            except LabelError as err:
                raise RequestError(str(err)) from err
            return [_Pass(s.name, s) for s in spaces], mixed
        if isinstance(request, AdHocRequest | MixedRequest):
            spaces, synonyms = [], ()
            if isinstance(request, MixedRequest):
                spaces = [trained[n] for n in self._check_spaces(request.spaces, trained, what="label space")]
                synonyms = request.synonyms
            try:
                space = adhoc_space(request.class_names)
                mixed = mix([*spaces, space], synonyms)
            except LabelError as err:
                raise RequestError(str(err)) from err
            if self.text_encoder is None or getattr(self.model.config, "classifier", "text") != "text":
                raise RequestError(
                    "Typed class names need a model with the text classifier and a text encoder."
                )
            chosen = request.query_sets if request.query_sets is not None else tuple(trained)
            names = self._check_spaces(chosen, trained, what="query set")
            embeddings = self.text_encoder.encode(space.class_names).to(self.device)  # [K, Dt]
            passes = [_Pass(s.name, s) for s in spaces] + [_Pass(n, space, embeddings) for n in names]
            return passes, mixed
        raise RequestError(f"Unknown request type {type(request).__name__}.")

    @staticmethod
    def _check_spaces(names: Sequence[str], trained: dict[str, LabelSpace], what: str) -> list[str]:
        known = ", ".join(trained) or "none"
        if not names:
            raise RequestError(f"Pick at least one {what}; this model has: {known}.")
        unknown = [n for n in names if n not in trained]
        if unknown:
            raise RequestError(f"Unknown {what} {', '.join(map(repr, unknown))}; this model has: {known}.")
        if len(set(names)) != len(names):
            raise RequestError(f"A {what} is listed twice: {list(names)}.")
        return list(names)

    def _features(self, rgb: Any, key: str) -> tuple[Any, ResizeInfo, bool]:
        """Pixel features of an RGB uint8 image from the LRU cache, or from `model.encode`."""
        cache_key = f"{key}|{self.max_size}|{self.size_divisor}"
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                features, info = self._cache[cache_key]
                return features, info, True
        resized, info = resize_for_model(rgb, self.max_size, self.size_divisor, self.upscale)
        pixel_values = to_pixel_values(resized, info.padded_hw).to(self.device)  # [1, 3, Hp, Wp]
        features = self.model.encode(pixel_values)
        with self._lock:
            self._cache[cache_key] = (features, info)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return features, info, False

    @staticmethod
    def _name(
        raw: list[RawSegment], p: _Pass, mixed: MixedLabelSpace, image_key: str, kind: str
    ) -> list[Segment]:
        """Class indices of one pass → Segments named by the mixed label space."""
        named = []
        for r in raw:
            source_class = p.space.classes[r.label]
            mixed_class = mixed.classes[mixed.class_of(p.space.name, source_class.name)]
            sources = tuple(Source(p.space.name, source_class.name, q, p.query_set) for q in r.queries)
            named.append(
                Segment(
                    id=segment_id(image_key, kind, sources),
                    mask=r.mask,
                    class_name=mixed_class.name,
                    label_spaces=(p.space.name,),
                    score=r.score,
                    isthing=source_class.isthing,
                    sources=sources,
                )
            )
        return named
