"""Post-processing: pure functions from decoder outputs to segments (SPEC §4, §6).

Legend: Q queries, K classes of one pass (class_probs has K + 1 columns, the last is
no-object ∅), h×w the model's mask resolution, H×W the output (full image) resolution.
Mask logits are upsampled bilinearly (align_corners=False) straight from the model's
grid to H×W and thresholded at 0 (σ ≥ 0.5). When the model saw a resized, padded image,
`valid_extent` gives the part of the h×w grid that covers the image (see
`image_io.ResizeInfo.valid_extent`), so padding never reaches the output.

Functions return `RawSegment`s (class indices of the pass's class list); the predictor
names them. `esf_fuse` works on named `Segment`s of a mixed label space.

Large photos: the predictor runs all of this at a working resolution whose long side is at most
`Predictor.postprocess_max_side` (an image that fits is worked on at its own size, unchanged), then
`upscale_segments` brings the final masks to the photo's size with nearest-neighbour sampling. The
model's own mask grid is far coarser than the working resolution, so this moves boundaries by at most
half a working pixel.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from resi_core.labels import MixedLabelSpace
from resi_core.segment import Segment

# Elements of one upsampled band [N, rows, W]; bounds peak memory on large images.
_BAND_ELEMENTS = 1 << 24


@dataclass(frozen=True, eq=False)
class RawSegment:
    """mask: bool [H, W]; label: class index in the pass's class list; queries: query indices."""

    mask: np.ndarray
    label: int
    score: float
    queries: tuple[int, ...]


def interp_matrix(out_size: int, in_size: int, extent: float | None = None) -> torch.Tensor:
    """[out_size, in_size] weights of 1-D linear resampling, align_corners=False.

    Output pixel i samples source coordinate (i + 0.5) · extent / out_size − 0.5, clamped
    to [0, in_size − 1]; `extent` (default in_size) is how many source pixels, from 0, the
    output spans. With the default it equals `F.interpolate(mode="bilinear")` along one axis.
    """
    extent = float(in_size if extent is None else extent)
    src = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (extent / out_size) - 0.5
    src = src.clamp(0, in_size - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=in_size - 1)
    frac = src - lo
    rows = torch.arange(out_size)
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    weights.index_put_((rows, lo), 1 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights.float()


def upsampled_bands(
    mask_logits: torch.Tensor,
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, logits [N, rows, W]) bands of `mask_logits` [N, h, w] upsampled to out_hw."""
    n, h, w = mask_logits.shape
    out_h, out_w = out_hw
    ext_h, ext_w = valid_extent if valid_extent is not None else (h, w)
    weights_h = interp_matrix(out_h, h, ext_h).to(mask_logits.device)  # [H, h]
    weights_w = interp_matrix(out_w, w, ext_w).to(mask_logits.device)  # [W, w]
    columns = mask_logits.float() @ weights_w.T  # [N, h, W]
    step = max(1, _BAND_ELEMENTS // max(1, n * out_w))
    for start in range(0, out_h, step):
        rows = slice(start, min(out_h, start + step))
        yield rows, torch.matmul(weights_h[rows], columns)  # [N, rows, W]


def upsample_masks(
    mask_logits: torch.Tensor,
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
) -> np.ndarray:
    """Mask logits [N, h, w] → bool [N, H, W] (upsampled logit ≥ 0)."""
    masks = np.zeros((mask_logits.shape[0], *out_hw), dtype=bool)
    for rows, band in upsampled_bands(mask_logits, out_hw, valid_extent):
        masks[:, rows] = (band >= 0).cpu().numpy()
    return masks


def _confident_queries(
    class_probs: torch.Tensor, score_threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask2Former's keep rule. class_probs [Q, K + 1] (last = ∅) -> each query's best class
    probability [Q], best class [Q] (K = ∅) and whether it is kept [Q] bool: its best class
    is not ∅ and scores above `score_threshold`."""
    scores, labels = class_probs.max(-1)  # [Q], [Q]
    return scores, labels, (labels != class_probs.shape[-1] - 1) & (scores > score_threshold)


def panoptic_inference(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    isthing: Sequence[bool],
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
) -> list[RawSegment]:
    """Mask2Former panoptic inference: non-overlapping segments.

    mask_logits [Q, h, w]; class_probs [Q, K + 1] (softmax, last = ∅); isthing [K].
    Keeps queries whose best class is not ∅ and whose score (that class's probability)
    is above `score_threshold`; each pixel goes to the kept query with the largest
    score·σ(mask); a query keeps the pixels it won inside its own mask (σ ≥ 0.5) and is
    dropped when that is less than `overlap_threshold` of its own mask (detectron2 uses
    the won area, which may include pixels outside the mask). Stuff segments of one class
    merge into one, scored by their best query.
    """
    num_classes = class_probs.shape[-1] - 1
    if len(isthing) != num_classes:
        raise ValueError(f"isthing has {len(isthing)} entries for {num_classes} classes.")
    scores, labels, keep = _confident_queries(class_probs, score_threshold)  # [Q] each
    kept = torch.nonzero(keep)[:, 0]  # [N]
    if kept.numel() == 0:
        return []
    kept_scores = scores[kept].float()  # [N]
    owner = np.zeros(out_hw, dtype=np.int64)  # [H, W] index into kept
    own_masks = np.zeros((kept.numel(), *out_hw), dtype=bool)  # [N, H, W]
    for rows, band in upsampled_bands(mask_logits[kept], out_hw, valid_extent):
        weighted = kept_scores[:, None, None] * band.sigmoid()  # [N, rows, W]
        # argmax over a contiguous last axis is several times faster than over axis 0.
        owner[rows] = weighted.permute(1, 2, 0).contiguous().argmax(-1).cpu().numpy()
        own_masks[:, rows] = (band >= 0).cpu().numpy()

    segments: list[RawSegment] = []
    stuff_at: dict[int, int] = {}  # class → index in segments
    for j, query in enumerate(kept.tolist()):
        own_area = own_masks[j].sum()
        mask = (owner == j) & own_masks[j]
        kept_area = mask.sum()
        if own_area == 0 or kept_area == 0 or kept_area / own_area < overlap_threshold:
            continue
        label, score = int(labels[query]), float(scores[query])
        if not isthing[label] and label in stuff_at:
            prev = segments[stuff_at[label]]
            segments[stuff_at[label]] = RawSegment(
                prev.mask | mask, label, max(prev.score, score), (*prev.queries, query)
            )
            continue
        if not isthing[label]:
            stuff_at[label] = len(segments)
        segments.append(RawSegment(mask, label, score, (query,)))
    return segments


def omi_panoptic(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    isthing: Sequence[bool],
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
) -> list[RawSegment]:
    """OMI step for ONE decoder pass (one label space): panoptic inference over that pass's classes.

    Segments of one pass never overlap; the predictor takes the union across passes,
    where overlaps are allowed, then `esf_fuse`s duplicates.
    """
    return panoptic_inference(
        mask_logits, class_probs, isthing, out_hw, valid_extent, score_threshold, overlap_threshold
    )


def rescore(segments: Sequence[RawSegment], class_probs: torch.Tensor) -> list[RawSegment]:
    """The same segments scored by other class probabilities [Q, K + 1] (calibrated ones): each takes the
    best probability of its class among its queries. Which segments exist, and their masks, are unchanged."""
    return [dataclasses.replace(s, score=max(float(class_probs[q, s.label]) for q in s.queries)) for s in segments]


def standard_panoptic_union(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    isthing: Sequence[bool],
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    score_threshold: float = 0.5,
    overlap_threshold: float = 0.8,
) -> list[RawSegment]:
    """Baseline rule 1 (SPEC §6): one non-overlapping panoptic inference over the union of classes.

    `class_probs` [Q, K + 1] covers every class of the mixed label space.
    """
    return panoptic_inference(
        mask_logits, class_probs, isthing, out_hw, valid_extent, score_threshold, overlap_threshold
    )


def overlapping_instances(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    score_threshold: float = 0.5,
) -> list[RawSegment]:
    """Baseline rule 2 (SPEC §6): every query whose best class is not ∅ and scores above
    `score_threshold` keeps its own thresholded mask; overlaps are allowed.

    mask_logits [Q, h, w]; class_probs [Q, K + 1]. Empty masks are dropped. Sorted by score.
    """
    scores, labels, keep = _confident_queries(class_probs, score_threshold)  # [Q] each
    kept = torch.nonzero(keep)[:, 0]  # [N]
    if kept.numel() == 0:
        return []
    masks = upsample_masks(mask_logits[kept], out_hw, valid_extent)  # [N, H, W]
    segments = [
        RawSegment(masks[j], int(labels[q]), float(scores[q]), (q,))
        for j, q in enumerate(kept.tolist())
        if masks[j].any()
    ]
    return sorted(segments, key=lambda s: -s.score)


def semantic_inference(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    pixel_threshold: float = 0.5,
    min_score: float | None = None,
) -> list[RawSegment]:
    """Mask2Former semantic inference (its rule for mIoU), with an "unlabeled" outcome.

    mask_logits [Q, h, w]; class_probs [Q, K + 1]. A pixel's score for class c is
    S_c = Σ_q p_q(c)·σ(m_q) over all queries (∅ excluded), as in Mask2Former. The pixel takes
    its best class when that score is at least `pixel_threshold`, else it stays unlabeled:
    our addition, because a label space need not cover every pixel (portrait labels only
    face and hair). `min_score`: only queries whose best class is not ∅ and scores above it
    take part (domain-aware OMI's held passes); None = every query. One non-overlapping
    segment per class, scored by the mean S_c over its pixels; its queries are the taking-part
    queries whose best class it is (else the query most likely to be it). Sorted by score.
    """
    num_classes = class_probs.shape[-1] - 1
    probs = class_probs[:, :num_classes].float()  # [Q, K]
    taking_part = torch.ones(probs.shape[0], dtype=torch.bool, device=probs.device)  # [Q]
    if min_score is not None:
        taking_part = _confident_queries(class_probs, min_score)[2]
        if not bool(taking_part.any()):
            return []
        probs = probs * taking_part[:, None]
    label_map = np.full(out_hw, -1, dtype=np.int64)  # [H, W]
    best_map = np.zeros(out_hw, dtype=np.float32)  # [H, W]
    for rows, band in upsampled_bands(mask_logits, out_hw, valid_extent):
        per_class = torch.einsum("qk,qrw->rwk", probs, band.sigmoid().float())  # [rows, W, K]
        best, cls = per_class.max(-1)  # [rows, W]
        label_map[rows] = torch.where(best >= pixel_threshold, cls, -1).cpu().numpy()
        best_map[rows] = best.cpu().numpy()
    best_class = probs.argmax(-1)  # [Q]
    segments = []
    for c in np.unique(label_map):
        if c < 0:
            continue
        mask = label_map == c
        queries = tuple(int(q) for q in torch.nonzero(taking_part & (best_class == int(c)))[:, 0].tolist())
        queries = queries or (int(probs[:, int(c)].argmax()),)  # won by a mixture: its likeliest query
        segments.append(RawSegment(mask, int(c), float(best_map[mask].mean()), queries))
    return sorted(segments, key=lambda s: -s.score)


def hold_out_of_domain(probs: torch.Tensor, in_domain: Sequence[bool], threshold: float) -> torch.Tensor:
    """The baselines' domain-aware variant (SPEC §6 fairness to domain-aware OMI, docs/BENCH.md): a query
    whose best class is of no label space of the image's likeliest domain must score above `threshold`,
    else it becomes ∅. probs [N, G + 1] (last = ∅); in_domain [G]. Returns a gated copy."""
    scores, labels = probs.max(-1)  # [N], [N]
    inside = torch.tensor([*in_domain, True], device=probs.device)  # ∅ is never held
    weak = ~inside[labels] & (scores <= threshold)  # [N]
    gated = probs.clone()
    gated[weak] = 0.0
    gated[weak, -1] = 1.0
    return gated


def semantic_union(segments_from_passes: Sequence[Sequence[Segment]], mixed: MixedLabelSpace) -> list[Segment]:
    """The per-pass semantic maps as one multi-label map: for each class of `mixed`, the union of
    the pixels every pass gave it (passes may overlap: "person" and "face"; "car" and "vehicle").
    A class's segment keeps the id and score of its best-scoring part and gains the others'
    sources and label spaces. Sorted by score, highest first."""
    by_class: dict[int, Segment] = {}
    for seg in sorted((s for segs in segments_from_passes for s in segs), key=lambda s: -s.score):
        cls = _mixed_class(seg, mixed)
        rep = by_class.get(cls)
        if rep is None:
            by_class[cls] = seg
            continue
        by_class[cls] = _absorb(rep, seg, rep.mask | seg.mask)
    return sorted(by_class.values(), key=lambda s: -s.score)


def instance_list(
    mask_logits: torch.Tensor,
    class_probs: torch.Tensor,
    out_hw: tuple[int, int],
    valid_extent: tuple[float, float] | None = None,
    topk: int = 100,
    isthing: Sequence[bool] | None = None,
) -> list[RawSegment]:
    """Mask2Former instance inference: scored, overlapping instances for AP.

    Takes the top-k (query, class) pairs by class probability (∅ excluded; only thing
    classes when `isthing` [K] is given); score = class probability × mean σ(mask) inside
    the mask (σ ≥ 0.5). A query may appear with several classes. Empty masks are dropped.
    Sorted by score, highest first.
    """
    num_queries, num_classes = class_probs.shape[0], class_probs.shape[-1] - 1
    probs = class_probs[:, :num_classes].float()  # [Q, K]
    if isthing is not None:
        probs = probs * torch.tensor(list(isthing), dtype=probs.dtype, device=probs.device)
    top_scores, top_index = probs.flatten().topk(min(topk, num_queries * num_classes))  # [T]
    top_scores, top_index = top_scores[top_scores > 0], top_index[top_scores > 0]
    if top_index.numel() == 0:
        return []
    top_query, top_label = top_index // num_classes, top_index % num_classes  # [T], [T]
    queries, slot = torch.unique(top_query, return_inverse=True)  # [U], [T]
    masks = np.zeros((queries.numel(), *out_hw), dtype=bool)  # [U, H, W]
    prob_sum = torch.zeros(queries.numel(), dtype=torch.float64)
    for rows, band in upsampled_bands(mask_logits[queries], out_hw, valid_extent):
        inside = band >= 0  # [U, rows, W]
        masks[:, rows] = inside.cpu().numpy()
        prob_sum += (band.sigmoid() * inside).sum((1, 2)).double().cpu()
    areas = torch.from_numpy(masks.reshape(masks.shape[0], -1).sum(1))  # [U]
    mask_scores = prob_sum / (areas + 1e-6)  # [U]
    segments = [
        RawSegment(masks[u], int(label), float(score) * float(mask_scores[u]), (int(queries[u]),))
        for u, label, score in zip(slot.tolist(), top_label.tolist(), top_scores.tolist(), strict=True)
        if areas[u] > 0
    ]
    return sorted(segments, key=lambda s: -s.score)


def working_size(out_hw: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """`out_hw` scaled down so its long side is at most `max_side` (never up; None: unchanged)."""
    h, w = out_hw
    if max_side is None or max(h, w) <= max_side:
        return out_hw
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def nearest_index(out_size: int, in_size: int) -> np.ndarray:
    """[out_size] source index of each output pixel for nearest-neighbour resampling: the source pixel
    whose span holds the output pixel's centre (the sampling grid of `interp_matrix`)."""
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)
    return np.minimum(centres.astype(np.int64), in_size - 1)


def upscale_masks(masks: Sequence[np.ndarray], out_hw: tuple[int, int]) -> list[np.ndarray]:
    """Bool masks [h, w] → bool [H, W] by nearest-neighbour sampling (`nearest_index` on both axes).

    The output is column-major (Fortran order), the order COCO RLE runs in, so encoding it needs no
    transposing copy. Rows are sampled at [w, H], then each source column is repeated as often as
    output columns sample it."""
    if not masks:
        return []
    h, w = masks[0].shape
    out_h, out_w = out_hw
    rows = nearest_index(out_h, h)  # [H]
    repeats = np.bincount(nearest_index(out_w, w), minlength=w)  # [w] output columns per source column
    return [np.repeat(np.take(mask.T, rows, axis=1), repeats, axis=0).T for mask in masks]


def upscale_segments(segments: Sequence[Segment], out_hw: tuple[int, int]) -> list[Segment]:
    """`segments` with their masks brought to `out_hw` (`upscale_masks`); everything else unchanged."""
    if not segments or segments[0].mask.shape == tuple(out_hw):
        return list(segments)
    masks = upscale_masks([s.mask for s in segments], out_hw)
    return [dataclasses.replace(s, mask=m) for s, m in zip(segments, masks, strict=True)]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool [H, W] masks; 0 when both are empty."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _mixed_class(segment: Segment, mixed: MixedLabelSpace) -> int:
    """The class of `mixed` that a named segment's (first) source maps to."""
    return mixed.class_of(segment.sources[0].label_space, segment.sources[0].class_name)


def _absorb(kept: Segment, other: Segment, mask: np.ndarray) -> Segment:
    """`kept` with `mask`, gaining `other`'s label spaces and sources; its id, class and score stay."""
    return dataclasses.replace(
        kept,
        mask=mask,
        label_spaces=tuple(dict.fromkeys((*kept.label_spaces, *other.label_spaces))),
        sources=(*kept.sources, *other.sources),
    )


def _passes(segment: Segment) -> set[tuple[str, str]]:
    """The decoder passes a segment came from: (label space classified against, query set)."""
    return {(src.label_space, src.query_set) for src in segment.sources}


def esf_fuse(
    segments_from_passes: Sequence[Sequence[Segment]],
    mixed: MixedLabelSpace,
    iou_threshold: float = 0.5,
) -> list[Segment]:
    """ESF (equivalent-semantics fusion) of the per-pass OMI outputs.

    Two segments from different passes (query sets) are duplicates when their sources map
    to the same class of `mixed` (same normalized name or a declared synonym) and their
    mask IoU is at least `iou_threshold`. Greedy by descending score: a segment fuses into
    the best-IoU kept segment of its class that shares no pass (label space, query set) with it; the kept segment
    keeps its mask, score and id and gains the other's sources and label spaces. Segments
    of different classes are always kept, however much they overlap; text similarity
    never merges. Returns the segments sorted by score, highest first.
    """
    ordered = sorted((s for segs in segments_from_passes for s in segs), key=lambda s: -s.score)
    kept: list[Segment] = []
    kept_class: list[int] = []
    for seg in ordered:
        cls = _mixed_class(seg, mixed)
        best, best_iou = -1, iou_threshold
        for i, other in enumerate(kept):
            if kept_class[i] != cls or _passes(other) & _passes(seg):
                continue
            iou = mask_iou(other.mask, seg.mask)
            if iou >= best_iou:
                best, best_iou = i, iou
        if best < 0:
            kept.append(seg)
            kept_class.append(cls)
            continue
        kept[best] = _absorb(kept[best], seg, kept[best].mask)
    return kept
