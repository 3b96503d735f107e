"""Predictor: numpy image in, segments out, with the pixel features cached by image hash.

Layering as in segment-anything: the model (`RESIModel`) computes tensors; this class
converts the image, caches `model.encode`, runs one batched `model.decode` for all query
sets, classifies, and calls the pure functions of `postprocess` (OMI per pass, then ESF).

Two stages, each usable on its own: `decode` (preprocessing, the decoder passes, their class
probabilities and domain-aware OMI's decision, as a `Decoded`) and `postprocess` (ESF-OMI,
instance list, semantic maps); `predict` is the two in a row. The benchmark runs the
baselines' inference rules on `Decoded.joint()` of the same `decode`, so every method is
measured on the code users run.
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
from resi_core.labels import (
    ADHOC_SPACE,
    ClassDef,
    LabelError,
    LabelSpace,
    MixedLabelSpace,
    adhoc_space,
    mix,
    normalize_name,
    space_domain,
)
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
    """Segment with the classes of trained label spaces; `synonyms` are declared-equal class pairs;
    `distinct` names label spaces whose same-named classes are not the other spaces' classes
    (labels.mix: "car (street)" and "car (avenue)" are two classes, never fused by ESF)."""

    spaces: tuple[str, ...]
    synonyms: tuple[tuple[str, str], ...] = ()
    distinct: tuple[str, ...] = ()


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
    distinct: tuple[str, ...] = ()


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
class Pass:
    """One decoder pass: the query set that runs and the label space it classifies against.

    adhoc_embeddings [K, Dt]: the ad-hoc classes' text embeddings; None for a trained space,
    which the model classifies itself (`space_logits`, text or linear head).
    union_columns: set for the baselines' one pass over the union (`Predictor.decode(union=True)`):
    the model's union columns (`model.union_names`) that `space`'s classes stand for.
    """

    query_set: str
    space: LabelSpace
    adhoc_embeddings: torch.Tensor | None = None
    union_columns: tuple[int, ...] | None = None


@dataclass(frozen=True)
class DomainDecision:
    """Domain-aware OMI's decision for one image (docs/MODEL.md).

    probs: the domain head's probability per trained domain ({} when the rule did not apply);
    likeliest: the domain the image most resembles among the asked trained spaces' domains (None
    when they span fewer than two); thresholds: the score threshold of each pass; held: the chosen
    trained label spaces held to the out-of-domain threshold; domains: the domain of each asked
    label space (None: it has none and is never held)."""

    probs: dict[str, float]
    likeliest: str | None
    thresholds: tuple[float, ...]
    held: tuple[str, ...]
    domains: dict[str, str | None]


@dataclass(frozen=True, eq=False)
class JointQueries:
    """Every query of a Decoded's passes classified over one list of rule classes, for the baselines'
    inference rules (SPEC §6), which run over all queries at once.

    mask_logits [N, h, w] and probs [N, G + 1] (last = ∅): the passes' queries, pass after pass, each
    query's class probabilities summed into the rule classes. A rule class stands for one or more mixed
    classes (`classes[g]`, indices into `mixed.classes`): one for a pass per label space and for a
    union column; several where one union column serves two classes of the mix that share a name
    ("car (street)" and "car (avenue)" of a model with one "car" column). in_domain [G]: whether a rule
    class belongs to a label space of the image's likeliest domain (None when no domains contest).
    pass_rows: each pass's rows."""

    mask_logits: torch.Tensor
    probs: torch.Tensor
    classes: tuple[tuple[int, ...], ...]
    isthing: tuple[bool, ...]
    in_domain: tuple[bool, ...] | None
    pass_rows: tuple[slice, ...]


@dataclass(frozen=True, eq=False)
class Decoded:
    """One image run through the model for one request, before post-processing (`Predictor.decode`).

    mask_logits [k, Q, h, w] (last decoder layer); probs: per pass [Q, K + 1], the softmax over the
    pass's classes and ∅; class_targets: per pass, for each of its classes, the mixed classes it
    stands for; info: how the image was resized and padded; extent: the part of the h×w grid that
    covers the image."""

    passes: tuple[Pass, ...]
    mixed: MixedLabelSpace
    mask_logits: torch.Tensor
    probs: tuple[torch.Tensor, ...]
    class_targets: tuple[tuple[tuple[int, ...], ...], ...]
    info: ResizeInfo
    extent: tuple[float, float]
    image_hash: str
    cache_hit: bool
    domain: DomainDecision
    timings: dict[str, float]
    familiarity_distance: float | None = None  # RESIModel.familiarity_distance; None without statistics

    @property
    def image_hw(self) -> tuple[int, int]:
        return self.info.original_hw

    def joint(self) -> JointQueries:
        """All passes' queries over the rule classes (see JointQueries)."""
        order = sorted({t for targets in self.class_targets for t in targets}, key=lambda t: (min(t), t))
        index = {t: g for g, t in enumerate(order)}
        parts = []
        for probs, targets in zip(self.probs, self.class_targets, strict=True):
            joint = torch.zeros(probs.shape[0], len(order) + 1, dtype=probs.dtype, device=probs.device)
            columns = torch.tensor([index[t] for t in targets] + [len(order)], device=probs.device)
            parts.append(joint.index_add_(1, columns, probs))  # [Q, G + 1]; synonyms add up
        rows, start = [], 0
        for probs in self.probs:
            rows.append(slice(start, start + probs.shape[0]))
            start += probs.shape[0]
        isthing = tuple(self.mixed.classes[t[0]].isthing for t in order)
        in_domain = None
        if self.domain.likeliest is not None:
            in_domain = tuple(
                any(self.domain.domains.get(space) == self.domain.likeliest
                    for c in t for space in self.mixed.classes[c].label_spaces)
                for t in order
            )
        return JointQueries(self.mask_logits.flatten(0, 1), torch.cat(parts), tuple(order), isthing, in_domain,
                            tuple(rows))


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
        return self.postprocess(self.decode(image, request), with_instances=with_instances,
                                with_semantic=with_semantic)

    @torch.inference_mode()
    def decode(self, image: ImageLike, request: Request, *, union: bool = False) -> Decoded:
        """Stage 1: the image prepared as the model expects (features cached), one batched decoder pass
        per query set of the request, each pass's class probabilities, and domain-aware OMI's decision.

        `union=True` is the baselines' inference (SPEC §6): ONE pass of a shared-query model classified
        over the union of the request's classes at once, a softmax over their union columns and ∅ (a
        column per normalized class name, so one column may stand for two same-named classes of a
        distinct space; declared synonyms are several columns of one class). Only for a
        `SpacesRequest` and a model with one shared query set.
        """
        start = time.perf_counter()
        passes, mixed = self._resolve(request)
        if union:
            passes = [self._union_pass(request, passes)]
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
        probs = tuple(self._classify(hidden[i], p) for i, p in enumerate(passes))  # [Q, K + 1] each
        timings["decode"] = time.perf_counter() - tick
        domain = self._domain_decision(features, info, passes, [s.name for s in mixed.spaces if s.name != ADHOC_SPACE])
        return Decoded(
            passes=tuple(passes),
            mixed=mixed,
            mask_logits=mask_logits,
            probs=probs,
            class_targets=tuple(self._class_targets(p, mixed) for p in passes),
            info=info,
            extent=info.valid_extent(tuple(mask_logits.shape[-2:])),
            image_hash=key,
            cache_hit=cache_hit,
            domain=domain,
            timings=timings,
            familiarity_distance=self._familiarity_distance(features, info),
        )

    @torch.inference_mode()
    def postprocess(self, decoded: Decoded, *, with_instances: bool = True, with_semantic: bool = False) -> Prediction:
        """Stage 2: ESF-OMI on a `decode` (see `predict` for the flags)."""
        if any(p.union_columns is not None for p in decoded.passes):
            raise ValueError("ESF-OMI runs on one pass per label space; a union decode is for the baselines' rules.")
        tick = time.perf_counter()
        temperature = float(getattr(self.model, "score_temperature", 1.0))
        score_map = getattr(self.model, "score_map", None)
        work_hw = working_size(decoded.image_hw, self.postprocess_max_side)
        per_pass: list[list[Segment]] = []
        instances: list[Segment] = []
        semantic: list[list[Segment]] = []
        hw, extent, key, mixed = decoded.image_hw, decoded.extent, decoded.image_hash, decoded.mixed
        thresholds = decoded.domain.thresholds
        for i, p in enumerate(decoded.passes):
            probs, masks = decoded.probs[i], decoded.mask_logits[i]
            isthing = [c.isthing for c in p.space.classes]
            raw = omi_panoptic(masks, probs, isthing, work_hw, extent, thresholds[i], self.overlap_threshold)
            if temperature != 1.0:  # calibrated scores (temperature scaling); the segments stay the same
                raw = rescore(raw, (probs.clamp_min(1e-30).log() / temperature).softmax(-1))
            if score_map is not None:  # then the fitted monotone map (docs/MODEL.md)
                raw = [dataclasses.replace(s, score=score_map(s.score)) for s in raw]
            per_pass.append(self._name(raw, p, mixed, key, "segment"))
            if with_instances:
                raw = instance_list(masks, probs, work_hw, extent, self.topk, isthing)
                instances.extend(self._name(raw, p, mixed, key, "instance"))
            if with_semantic:
                min_score = thresholds[i] if thresholds[i] > self.score_threshold else None  # held pass
                raw = semantic_inference(masks, probs, work_hw, extent, self.semantic_threshold, min_score)
                semantic.append(self._name(raw, p, mixed, key, "semantic"))
        segments = esf_fuse(per_pass, mixed, self.iou_threshold)
        instances.sort(key=lambda s: -s.score)
        union = semantic_union(semantic, mixed)
        timings = {**decoded.timings, "postprocess": time.perf_counter() - tick}

        tick = time.perf_counter()  # one upsampling of the final masks (nothing to do when work_hw is the image's)
        segments = upscale_segments(segments, hw)
        instances = upscale_segments(instances, hw)
        union = upscale_segments(union, hw)
        timings["upsample"] = time.perf_counter() - tick
        timings["total"] = sum(timings.values())
        distance = decoded.familiarity_distance
        unfamiliar = distance is not None and distance > self.model.familiarity.threshold
        return Prediction(
            segments, instances, timings, mixed, key, decoded.cache_hit, decoded.domain.probs, decoded.domain.held,
            union, distance, unfamiliar, UNFAMILIAR_NOTICE if unfamiliar else "",
        )

    def _familiarity_distance(self, features: Any, info: ResizeInfo) -> float | None:
        """The image's familiarity distance (`RESIModel.familiarity_distance`), None without statistics."""
        if getattr(self.model, "familiarity", None) is None:
            return None
        pooled = self.model.pooled_features(features, info.valid_fraction)  # [1, F]
        return float(self.model.familiarity_distance(pooled)[0])

    def _classify(self, hidden: torch.Tensor, p: Pass) -> torch.Tensor:
        """hidden [Q, D] of one pass -> [Q, K + 1] probabilities over the pass's classes and ∅."""
        if p.union_columns is not None:
            logits = self.model.union_logits(hidden)  # [Q, U + 1]
            logits = logits[:, [*p.union_columns, logits.shape[-1] - 1]]  # the asked columns + ∅
        elif p.adhoc_embeddings is None:
            logits = self.model.space_logits(hidden, p.space.name)  # [Q, K + 1]
        else:
            logits = self.model.class_logits(hidden, p.adhoc_embeddings)  # [Q, K + 1]
        return logits.float().softmax(-1)

    def _union_pass(self, request: Request, passes: Sequence[Pass]) -> Pass:
        """The baselines' one pass over the union columns of the request's label spaces."""
        if not isinstance(request, SpacesRequest):
            raise RequestError("A union decode takes trained label spaces (a SpacesRequest).")
        if getattr(self.model.config, "query_mode", None) != "shared":
            raise RequestError("A union decode needs a model with one shared query set (a baseline).")
        columns = sorted({c for p in passes for c in self.model.space_columns[p.space.name]})
        by_column: dict[int, ClassDef] = {}
        for p in passes:
            for c, col in zip(p.space.classes, self.model.space_columns[p.space.name], strict=True):
                by_column.setdefault(col, c)
        space = LabelSpace("union", tuple(ClassDef(self.model.union_names[c], by_column[c].isthing) for c in columns))
        return Pass(passes[0].query_set, space, union_columns=tuple(columns))

    def _class_targets(self, p: Pass, mixed: MixedLabelSpace) -> tuple[tuple[int, ...], ...]:
        """For each class of pass `p`, the mixed classes it stands for (one, except a union column that
        serves same-named classes of several label spaces kept distinct)."""
        if p.union_columns is None:
            return tuple((mixed.class_of(p.space.name, c.name),) for c in p.space.classes)
        targets = []
        for c in p.space.classes:
            key = normalize_name(c.name)
            targets.append(tuple(i for i, m in enumerate(mixed.classes)
                                 if any(normalize_name(n) == key for _, n in m.sources)))
        return tuple(targets)

    def _domain_decision(
        self, features: Any, info: ResizeInfo, passes: Sequence[Pass], asked: Sequence[str]
    ) -> DomainDecision:
        """Domain-aware OMI: the score threshold of each pass for this image.

        A pass's domain is its query set when the fitted domain head knows that set, else the domain
        the set inherited (`model.space_domains`: a label space added later by `train finetune` whose
        training images looked like one trained space's, or one whose training images the head could not
        tell from a trained space's, `train/domain.py`), else none. Passes of trained label spaces and
        passes of typed names are two groups. In a group whose passes span two or more domains, the
        passes of the domain this image most resembles keep `score_threshold` and the group's passes of
        other domains are held to `out_of_domain_threshold`; passes of one domain (street and a
        street-like space) are kept alike. So a chosen space is never held because of the query sets
        that typed names run through. Passes without a domain always keep `score_threshold`. A union
        pass (the baselines') is one pass and never held; `likeliest` is then decided over the asked
        label spaces' domains, for the baselines' class-level variant (`postprocess.hold_out_of_domain`).
        """
        thresholds = [self.score_threshold] * len(passes)
        head_sets = list(getattr(self.model, "domain_spaces", []))
        inherited = getattr(self.model, "space_domains", {})
        domains = {s: space_domain(s, head_sets, inherited) for s in asked}
        if self.out_of_domain_threshold is None or getattr(self.model, "domain_head", None) is None:
            return DomainDecision({}, None, tuple(thresholds), (), domains)
        groups: dict[bool, list[tuple[int | None, str]]] = {True: [], False: []}  # trained / typed
        for i, p in enumerate(passes):
            if p.union_columns is not None:  # one pass over every asked space: decide over the spaces
                groups[True] += [(None, d) for d in domains.values() if d in head_sets]
                continue
            domain = space_domain(p.query_set, head_sets, inherited)
            if domain in head_sets:
                groups[p.adhoc_embeddings is None].append((i, domain))
        contested = {trained: g for trained, g in groups.items() if len({d for _, d in g}) > 1}
        if not contested:
            return DomainDecision({}, None, tuple(thresholds), (), domains)
        domain_probs = self.model.image_domain_probs(features, info.valid_fraction)
        held: list[str] = []
        likeliest_trained = None
        for trained, members in contested.items():
            likeliest = max((d for _, d in members), key=domain_probs.__getitem__)  # ties: the first pass's
            if trained:
                likeliest_trained = likeliest
            for i, domain in members:
                if i is not None and domain != likeliest:
                    thresholds[i] = max(self.score_threshold, self.out_of_domain_threshold)
                    if passes[i].adhoc_embeddings is None:
                        held.append(passes[i].query_set)
        return DomainDecision(domain_probs, likeliest_trained, tuple(thresholds), tuple(held), domains)

    def _resolve(self, request: Request) -> tuple[list[Pass], MixedLabelSpace]:
        """Check the request; return its decoder passes and its mixed label space."""
        trained = self.label_spaces
        if isinstance(request, SpacesRequest):
            names = self._check_spaces(request.spaces, trained, what="label space")
            spaces = [trained[n] for n in names]
            try:
                mixed = mix(spaces, request.synonyms, request.distinct)
            except LabelError as err:
                raise RequestError(str(err)) from err
            return [Pass(s.name, s) for s in spaces], mixed
        if isinstance(request, AdHocRequest | MixedRequest):
            spaces, synonyms, distinct = [], (), ()
            if isinstance(request, MixedRequest):
                spaces = [trained[n] for n in self._check_spaces(request.spaces, trained, what="label space")]
                synonyms, distinct = request.synonyms, request.distinct
            try:
                space = adhoc_space(request.class_names)
                mixed = mix([*spaces, space], synonyms, distinct)
            except LabelError as err:
                raise RequestError(str(err)) from err
            if self.text_encoder is None or getattr(self.model.config, "classifier", "text") != "text":
                raise RequestError(
                    "Typed class names need a model with the text classifier and a text encoder."
                )
            chosen = request.query_sets if request.query_sets is not None else tuple(trained)
            names = self._check_spaces(chosen, trained, what="query set")
            embeddings = self.text_encoder.encode(space.class_names).to(self.device)  # [K, Dt]
            passes = [Pass(s.name, s) for s in spaces] + [Pass(n, space, embeddings) for n in names]
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
        raw: list[RawSegment], p: Pass, mixed: MixedLabelSpace, image_key: str, kind: str
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
