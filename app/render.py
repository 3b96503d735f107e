"""Drawing segments over an image: a stable color per class, outlines, the selection, and what lies
under a click. Pure functions of arrays."""

from __future__ import annotations

import colorsys
import hashlib
import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from app.segments import SegmentView
from resi_core.labels import normalize_name

OVERLAY_ALPHA = 0.45
# The Label tab draws images at most this many pixels on the long side: every update sends the
# picture to the browser, which for a 12 MP photo takes seconds. Masks are stored and edited at full
# resolution; only the picture in the browser is smaller.
DISPLAY_MAX_SIDE = 1280
# Small images are drawn larger (the long side at least this), so a 128-pixel image is not a stamp on the
# screen and its segments can be clicked and painted.
DISPLAY_MIN_SIDE = 512
SELECTED_OUTLINE = 3  # pixels (display grid)


def display_shape(shape: tuple[int, ...], max_side: int = DISPLAY_MAX_SIDE,
                  min_side: int = DISPLAY_MIN_SIDE) -> tuple[int, int]:
    """(H, W) of the picture shown for an image of `shape`: the long side at most `max_side`, and at
    least `min_side`."""
    height, width = shape[:2]
    long_side = max(height, width)
    scale = max_side / long_side if long_side > max_side else max(1.0, min_side / long_side)
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask to `shape` (H, W)."""
    if mask.shape == shape:
        return mask.astype(bool, copy=False)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 0


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """RGB uint8 [H, W, 3] resized to `shape` (H, W): smoothly when smaller, in plain blocks when larger
    (an enlarged image shows its own pixels); unchanged when it already fits."""
    if image.shape[:2] == shape:
        return image
    enlarge = shape[0] > image.shape[0]
    method = Image.Resampling.NEAREST if enlarge else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(image).resize((shape[1], shape[0]), method))


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


def draw_order(segments: Sequence[SegmentView]) -> list[SegmentView]:
    """Largest first, so a part drawn over its whole (a face over its person) stays visible and is
    the one a click on it reaches first; equal areas keep their stored order."""
    return sorted(segments, key=lambda s: -s.area)


def mask_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
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


def grow(mask: np.ndarray, width: int) -> np.ndarray:
    """Bool HxW: `mask` dilated by `width` pixels (4-neighbourhood steps)."""
    out = mask.copy()
    for _ in range(width):
        step = out.copy()
        step[1:, :] |= out[:-1, :]
        step[:-1, :] |= out[1:, :]
        step[:, 1:] |= out[:, :-1]
        step[:, :-1] |= out[:, 1:]
        out = step
    return out


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice] | None:
    """The bounding box of `mask`, `pad` pixels wider on every side (clipped), or None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    height, width = mask.shape
    return (slice(max(rows[0] - pad, 0), min(rows[-1] + 1 + pad, height)),
            slice(max(cols[0] - pad, 0), min(cols[-1] + 1 + pad, width)))


def overview(image: np.ndarray, segments: Sequence[SegmentView], selected_id: str | None = None,
             alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """RGB uint8 at display size: every pixel of a mask blended with opacity `alpha` in the class color
    of the topmost segment there (`draw_order`), each mask outlined in its color, the selected one
    ringed in white on black (`overview_picture`, as an array)."""
    return np.asarray(overview_picture(image, segments, selected_id, alpha))


def overview_picture(image: np.ndarray, segments: Sequence[SegmentView], selected_id: str | None = None,
                     alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """`overview` as a PIL image, which `picture_file` encodes without another copy. Drawn on every save
    and click, so it makes few full-size passes: one index image (per pixel, which palette color), one
    weight image (how much of that color), one paste."""
    shape = display_shape(image.shape)
    picture = resize_image(np.ascontiguousarray(image[..., :3]), shape)
    order = draw_order(segments)
    # Palette: 0 none, 1..n the segments in `order`, then white and black for the selected segment's ring.
    white, black = len(order) + 1, len(order) + 2
    index_type = np.uint8 if black < 256 else np.uint16
    drawn = np.zeros(shape, dtype=index_type)
    boxes = []
    for k, seg in enumerate(order, start=1):  # fills: the topmost segment's color
        mask = resize_mask(seg.mask, shape)
        box = _box(mask, 1)  # one pixel wider: the outline of a mask's outermost pixels is inside
        boxes.append((seg, mask, box))
        if box is not None:
            drawn[box][mask[box]] = k
    weight = (drawn > 0).view(np.uint8) * np.uint8(round(alpha * 255))
    for k, (_, mask, box) in enumerate(boxes, start=1):  # outlines, over every fill, later ones on top
        if box is None:
            continue
        edge = mask_outline(mask[box])
        drawn[box][edge] = k
        weight[box][edge] = 255
    selected = next((mask for seg, mask, box in boxes if seg.id == selected_id and box is not None), None)
    if selected is not None:
        box = _box(selected, SELECTED_OUTLINE + 1)
        part = selected[box]
        ring = grow(part, SELECTED_OUTLINE) & ~part
        rim = grow(ring, 1) & ~ring & ~part
        for color, where in ((white, ring), (black, rim)):
            drawn[box][where] = color
            weight[box][where] = 255
    colors = np.array([(0, 0, 0)] + [class_color(seg.class_name) for seg in order] + [(255, 255, 255), (0, 0, 0)],
                      dtype=np.uint8)
    if index_type is np.uint8:  # a palette image: PIL looks the colors up
        layer = Image.fromarray(drawn, mode="P")
        layer.putpalette(colors.tobytes())
        layer = layer.convert("RGB")
    else:
        layer = Image.fromarray(colors[drawn])
    out = Image.fromarray(picture)  # a copy (PIL maps no RGB buffer): the paste below leaves `image` as it is
    out.paste(layer, (0, 0), Image.fromarray(weight, mode="L"))
    return out


def segments_at(segments: Sequence[SegmentView], point: tuple[int, int], display: tuple[int, int]) -> list[str]:
    """Ids of the segments under `point` (x, y in the picture of size `display`, (H, W)), topmost first."""
    x, y = point
    hits = []
    for seg in draw_order(segments):
        height, width = seg.mask.shape
        row = min(max(int(y * height / display[0]), 0), height - 1)
        col = min(max(int(x * width / display[1]), 0), width - 1)
        if seg.mask[row, col]:
            hits.append(seg.id)
    return hits[::-1]


def picture_file(picture: np.ndarray | Image.Image, folder: str | Path) -> str:
    """`picture` (RGB uint8) as a JPEG file in `folder`, named by its content, written once and atomically.

    The Label tab hands its pictures to gradio as files: gradio 6.31 saves an image it is given as an array
    by rewriting its cache file in place, and a browser still fetching the same picture then got a
    truncated file ("Too little data for declared Content-Length") and showed nothing.
    """
    buffer = io.BytesIO()
    (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    path = Path(folder) / "resi-pictures" / f"{hashlib.sha256(data).hexdigest()[:40]}.jpeg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        staging.write_bytes(data)
        os.replace(staging, path)
    return str(path)
