"""Drawing segments over an image: a stable color per class and per-label-space visibility."""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from app.segments import SegmentView
from resi_core.labels import normalize_name

OVERLAY_ALPHA = 0.45
# The Label tab draws images at most this many pixels on the long side: Gradio encodes one full-size
# layer per segment on every update, which for a 12 MP photo with dozens of segments takes seconds.
# Masks are stored and edited at full resolution; only the picture in the browser is smaller.
DISPLAY_MAX_SIDE = 1280


def display_shape(shape: tuple[int, ...], max_side: int = DISPLAY_MAX_SIDE) -> tuple[int, int]:
    """(H, W) of the picture shown for an image of `shape`: the long side at most `max_side`."""
    height, width = shape[:2]
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to `shape` (H, W)."""
    if mask.shape == shape:
        return mask.astype(bool, copy=False)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] resized to `shape` (H, W), smoothly; unchanged when it already fits."""
    if image.shape[:2] == shape:
        return image
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def class_color(class_name: str) -> tuple[int, int, int]:
    """A color that depends only on the normalized class name, so it is the same in every view."""
    digest = hashlib.sha1(normalize_name(class_name).encode("utf-8")).digest()
    hue = digest[0] / 256 + digest[1] / 65536
    saturation = 0.65 + 0.3 * (digest[2] / 255)
    value = 0.75 + 0.25 * (digest[3] / 255)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return round(r * 255), round(g * 255), round(b * 255)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def segment_label(seg: SegmentView) -> str:
    """The legend text of one segment: class, label space and a short id to tell twins apart."""
    return f"{seg.class_name} [{seg.label_space}] #{seg.id[:6]}"


def overlay(
    image: np.ndarray,
    segments: Sequence[SegmentView],
    selected_id: str | None = None,
    alpha: float = OVERLAY_ALPHA,
) -> np.ndarray:
    """RGB uint8 HxWx3: each mask blended in its class color, the selected one outlined in white.

    Masks may overlap; later segments are blended on top of earlier ones, so both stay visible.
    """
    out = image[..., :3].astype(np.float32)
    for seg in segments:
        color = np.array(class_color(seg.class_name), dtype=np.float32)
        out[seg.mask] = (1 - alpha) * out[seg.mask] + alpha * color
    for seg in segments:
        if seg.id == selected_id:
            out[mask_outline(seg.mask)] = 255.0
    return out.round().astype(np.uint8)


def mask_outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Bool HxW: pixels of `mask` within `width` pixels of its border."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        inner = shrunk
    return mask & ~inner


def annotated_value(
    image: np.ndarray, segments: Sequence[SegmentView]
) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """The value of a gr.AnnotatedImage: one (float mask, label) per segment, overlaps kept, at the
    display size (DISPLAY_MAX_SIDE)."""
    shape = display_shape(image.shape)
    return (resize_image(np.ascontiguousarray(image[..., :3]), shape),
            [(resize_mask(seg.mask, shape).astype(np.float32), segment_label(seg)) for seg in segments])


def color_map(segments: Sequence[SegmentView]) -> dict[str, str]:
    """gr.AnnotatedImage color_map: every legend entry in its class color."""
    return {segment_label(s): hex_color(class_color(s.class_name)) for s in segments}


def segment_rows(segments: Sequence[SegmentView]) -> list[list[object]]:
    """Rows of the segment table: id, class, label space, score, area in pixels."""
    return [
        [s.id, s.class_name, s.label_space, None if s.score is None else round(s.score, 3), s.area]
        for s in segments
    ]


SEGMENT_COLUMNS = ["id", "class", "label space", "score", "area"]
