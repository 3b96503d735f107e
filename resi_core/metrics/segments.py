"""One image's ground truth and predictions, decoded once and shared by every metric.

Legend: H, W image size; G ground-truth segments, D predicted segments (detections);
S pixels of a window (a box that holds every mask of one class), flattened.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from formats.coco import GroundTruth, GTAnnotation, ImageInfo, Prediction
from formats.rle import decode_rles, rle_boxes

# Pixel counts are summed with a float matmul (BLAS); float32 counts exactly up to 2**24.
_FLOAT32_EXACT = 2**24

Window = tuple[slice, slice]  # rows, columns of an image


@dataclass(frozen=True)
class ImageSegments:
    gt_masks: np.ndarray  # [G, H, W] bool
    gt_boxes: np.ndarray  # [G, 4] int64 x0, y0, x1, y1 (exclusive), a superset of the mask
    gt_classes: np.ndarray  # [G] int64 class key
    gt_crowd: np.ndarray  # [G] bool
    pred_masks: np.ndarray  # [D, H, W] bool
    pred_boxes: np.ndarray  # [D, 4] int64
    pred_classes: np.ndarray  # [D] int64 class key
    pred_scores: np.ndarray  # [D] float64
    pred_spaces: tuple[str | None, ...]  # [D] label space of the decoder pass, None when unknown
    space_void: Mapping[str, np.ndarray]  # label space -> [H, W] bool, pixels unknown in that space

    def class_window(self, class_key: int) -> Window:
        """The smallest box holding every mask of the class on either side.

        Every count a metric needs for the class lives there (void and crowd only matter
        where a prediction is), so metrics crop to it instead of scanning the whole image.
        """
        boxes = np.concatenate(
            [self.gt_boxes[self.gt_classes == class_key], self.pred_boxes[self.pred_classes == class_key]]
        )
        if not len(boxes):
            return slice(0, 0), slice(0, 0)
        x0, y0 = boxes[:, :2].min(axis=0)
        x1, y1 = boxes[:, 2:].max(axis=0)
        return slice(int(y0), int(y1)), slice(int(x0), int(x1))

    def gt_crop(self, rows: np.ndarray, window: Window) -> np.ndarray:
        """Ground-truth masks of the rows (bool [G]), cropped and flattened -> [n, S] bool."""
        return _crop(self.gt_masks, rows, window)

    def pred_crop(self, rows: np.ndarray, window: Window) -> np.ndarray:
        """Predicted masks of the rows (bool [D]), cropped and flattened -> [n, S] bool."""
        return _crop(self.pred_masks, rows, window)

    def class_void(self, class_key: int, spaces: Sequence[str], window: Window) -> np.ndarray | None:
        """[S] bool: the window's pixels that are unknown for the class; None if none are.

        A pixel is void for a class of several label spaces only when it is void in every
        one of them (docs/FORMATS.md). Pixels the class's own ground truth covers are known,
        whatever the void says, so IoU never exceeds 1.
        """
        if not spaces or any(s not in self.space_void for s in spaces):
            return None
        void = np.logical_and.reduce([self.space_void[s][window].reshape(-1) for s in spaces])
        own = self.gt_crop(self.gt_classes == class_key, window)
        if len(own):
            void &= ~own.any(axis=0)
        return void if void.any() else None

    def select(self, gt_rows: np.ndarray, pred_rows: np.ndarray) -> ImageSegments:
        """The same image with only the given ground-truth and prediction rows (bool arrays)."""
        pred_index = np.flatnonzero(pred_rows)
        return replace(
            self,
            gt_masks=self.gt_masks[gt_rows],
            gt_boxes=self.gt_boxes[gt_rows],
            gt_classes=self.gt_classes[gt_rows],
            gt_crowd=self.gt_crowd[gt_rows],
            pred_masks=self.pred_masks[pred_index],
            pred_boxes=self.pred_boxes[pred_index],
            pred_classes=self.pred_classes[pred_index],
            pred_scores=self.pred_scores[pred_index],
            pred_spaces=tuple(self.pred_spaces[i] for i in pred_index),
        )


def _crop(masks: np.ndarray, rows: np.ndarray, window: Window) -> np.ndarray:
    index = np.flatnonzero(rows)
    cropped = masks[index, window[0], window[1]]  # [n, h, w]
    return cropped.reshape(len(index), cropped.shape[1] * cropped.shape[2])


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Bool masks [N, H, W] -> int64 boxes [N, 4] x0, y0, x1, y1 (exclusive); empty -> zeros."""
    boxes = np.zeros((len(masks), 4), dtype=np.int64)
    for i, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        if len(ys):
            boxes[i] = xs[0], ys[0], xs[-1] + 1, ys[-1] + 1
    return boxes


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection sizes of bool masks a [N, P] and b [M, P] -> int64 [N, M]."""
    dtype = np.float32 if a.shape[1] < _FLOAT32_EXACT else np.float64
    return np.rint(a.astype(dtype) @ b.astype(dtype).T).astype(np.int64)


def image_segments(
    image: ImageInfo, annotations: Sequence[GTAnnotation], predictions: Sequence[Prediction]
) -> ImageSegments:
    """Decode one image's ground truth, predictions and void masks."""
    h, w = image.height, image.width
    void_names = list(image.void)
    voids = decode_rles([image.void[s] for s in void_names], h, w)
    gt_rles, pred_rles = [a.rle for a in annotations], [p.rle for p in predictions]
    return ImageSegments(
        gt_masks=decode_rles(gt_rles, h, w),
        gt_boxes=rle_boxes(gt_rles),
        gt_classes=np.array([a.category_id for a in annotations], dtype=np.int64),
        gt_crowd=np.array([a.iscrowd for a in annotations], dtype=bool),
        pred_masks=decode_rles(pred_rles, h, w),
        pred_boxes=rle_boxes(pred_rles),
        pred_classes=np.array([p.category_id for p in predictions], dtype=np.int64),
        pred_scores=np.array([p.score for p in predictions], dtype=np.float64),
        pred_spaces=tuple(p.label_space for p in predictions),
        space_void={s: voids[i] for i, s in enumerate(void_names)},
    )


def iter_image_segments(gt: GroundTruth, predictions: Sequence[Prediction]) -> Iterator[ImageSegments]:
    """Decoded segments of every ground-truth image, in image order."""
    preds_by_image: dict[int, list[Prediction]] = {i: [] for i in gt.images}
    for p in predictions:
        preds_by_image[p.image_id].append(p)
    anns_by_image = gt.annotations_by_image()
    for image_id, image in gt.images.items():
        yield image_segments(image, anns_by_image[image_id], preds_by_image[image_id])


def from_masks(
    gts: Sequence[tuple[np.ndarray, int, bool]],
    preds: Sequence[tuple[np.ndarray, int, float]],
    void: np.ndarray | None,
    space: str,
) -> ImageSegments:
    """Build one image from bool [H, W] masks: gts as (mask, class, iscrowd), preds as (mask, class, score)."""
    shapes = {np.shape(m) for m, _, _ in (*gts, *preds)} | ({np.shape(void)} if void is not None else set())
    if len(shapes) > 1:
        raise ValueError(f"All masks of one image must have the same shape, got {sorted(shapes)}")
    shape = next(iter(shapes)) if shapes else (0, 0)
    if len(shape) != 2:
        raise ValueError(f"Masks must be [H, W], got shape {shape}")

    def stack(masks: list[np.ndarray]) -> np.ndarray:
        if not masks:
            return np.zeros((0, *shape), dtype=bool)
        return np.stack([np.asarray(m, dtype=bool) for m in masks])

    gt_masks, pred_masks = stack([m for m, _, _ in gts]), stack([m for m, _, _ in preds])
    return ImageSegments(
        gt_masks=gt_masks,
        gt_boxes=mask_boxes(gt_masks),
        gt_classes=np.array([c for _, c, _ in gts], dtype=np.int64),
        gt_crowd=np.array([bool(k) for _, _, k in gts], dtype=bool),
        pred_masks=pred_masks,
        pred_boxes=mask_boxes(pred_masks),
        pred_classes=np.array([c for _, c, _ in preds], dtype=np.int64),
        pred_scores=np.array([s for _, _, s in preds], dtype=np.float64),
        pred_spaces=(None,) * len(preds),
        space_void={} if void is None else {space: np.asarray(void, dtype=bool)},
    )


def class_names(gt: GroundTruth) -> dict[int, str]:
    """Category id -> display name; a repeated name gets its id appended so keys stay unique."""
    counts: dict[str, int] = {}
    for c in gt.categories.values():
        counts[c.name] = counts.get(c.name, 0) + 1
    return {i: c.name if counts[c.name] == 1 else f"{c.name} ({i})" for i, c in gt.categories.items()}
