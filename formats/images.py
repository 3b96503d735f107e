"""The one image decoder: every path (upload, the labeling view, proposals, fine-tuning, training,
export) turns a file into the same RGB uint8 HWC pixels here.

The rule:
- EXIF orientation is applied (the image as a viewer shows it upright); sizes and masks are in
  that frame.
- Alpha (RGBA, LA, PA, a palette with a transparent index) is composited on white, as an image
  viewer shows a transparent PNG: the color under fully transparent pixels is often arbitrary,
  so dropping alpha would expose it.
- 16-bit images are scaled by 255/65535; CMYK, YCbCr, palette, 1-bit and float modes go through
  Pillow's conversion to RGB.
- The pixel count is checked from the header, before decoding (decompression bombs).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 40 MP photo is larger than any camera image we label, yet its RGB copy (120 MB) is safe to hold.
MAX_PIXELS = 40_000_000
EXIF_ORIENTATION_TAG = 0x0112

ImageLike = np.ndarray | Image.Image

# File name suffixes a folder of images or an upload is read by (Pillow reads them all).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class ImageError(ValueError):
    """An image a user gave that cannot be used (empty, wrong shape, corrupt, too large)."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation 1..8 (1 = as stored; anything else unreadable counts as 1)."""
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError, OSError):
        return 1
    return value if value in range(1, 9) else 1


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    """(width, height) after the EXIF orientation is applied: 5..8 turn the image by 90 or 270 degrees."""
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def decode_image(source: str | os.PathLike | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file (path or raw bytes) as RGB uint8 HWC, upright per its EXIF orientation.

    Raises ImageError for a missing, non-image, truncated or oversized file.
    """
    name = "the image data" if isinstance(source, bytes) else str(source)
    try:
        opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
    except FileNotFoundError as err:
        raise ImageError(f"No such image file: {name}.") from err
    except UnidentifiedImageError as err:
        raise ImageError(f"{name} is not an image file Pillow can read.") from err
    except (OSError, Image.DecompressionBombError) as err:
        raise ImageError(f"{name} is truncated or corrupt: {err}.") from err
    with opened as image:
        if image.width * image.height > max_pixels:
            raise ImageError(
                f"{name} is {image.width}x{image.height} pixels, more than the {max_pixels:,}-pixel limit."
            )
        try:
            with warnings.catch_warnings():
                # Our own limit above already guards against bombs.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image.load()
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ImageError(f"{name} is truncated or corrupt: {err}.") from err
        return to_rgb_uint8(upright)


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """Convert an array or PIL image to RGB uint8 HWC (the rule in the module docstring).

    Accepted arrays: HxW (grayscale), HxWx1, HxWx2 (gray + alpha), HxWx3 (RGB), HxWx4 (RGBA).
    - bool: False/True → 0/255.
    - uint8 is taken as is; uint16 (16-bit) is scaled by 255/65535. Other integer types
      are taken as 8-bit when they fit in [0, 255] and as 16-bit when they fit in [0, 65535].
    - float: [0, 1] when the maximum is at most 1, else [0, 255]; values are clipped.
    - Alpha is composited on white.
    PIL images in any mode (palette, CMYK, YCbCr, 16-bit "I;16", "I", "F", "1") are converted too.
    Raises ImageError for empty or mis-shaped input, non-finite floats or out-of-range integers.
    """
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image)
    if not isinstance(image, np.ndarray):
        raise ImageError(f"Expected an image array or PIL image, got {type(image).__name__}.")
    array = image
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"Image array has shape {image.shape}; expected HxW, or HxWxC with C in 1, 2, 3 or 4."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"Image has no pixels (shape {image.shape}).")
    unit = _to_unit_float(array) if array.dtype != np.uint8 else None
    if unit is None:
        if array.shape[2] == 3:
            return np.ascontiguousarray(array)
        unit = array.astype(np.float32) / 255.0
    channels = unit.shape[2]
    if channels in (2, 4):
        alpha = unit[:, :, -1:]
        unit = unit[:, :, :-1] * alpha + (1.0 - alpha)  # composite on white
    if unit.shape[2] == 1:
        unit = np.repeat(unit, 3, axis=2)
    return np.round(unit * 255.0).astype(np.uint8)  # [H, W, 3]


def _to_unit_float(array: np.ndarray) -> np.ndarray:
    """Non-uint8 array → float32 in [0, 1] (see `to_rgb_uint8` for the rules)."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 65535:
            raise ImageError(f"Integer image values span [{lo}, {hi}]; expected 8-bit or 16-bit values.")
        return array.astype(np.float32) / (255.0 if hi <= 255 else 65535.0)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError("Float image contains NaN or infinite values.")
        scale = 1.0 if float(array.max()) <= 1.0 else 255.0
        return np.clip(array.astype(np.float32) / scale, 0.0, 1.0)
    raise ImageError(f"Unsupported image dtype {array.dtype}.")


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    if image.width == 0 or image.height == 0:
        raise ImageError("Image has no pixels.")
    mode = image.mode
    if mode in ("1", "F", "I") or mode.startswith("I;16"):
        return to_rgb_uint8(np.asarray(image))
    if (mode == "P" and "transparency" in image.info) or mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        return to_rgb_uint8(np.asarray(image))
    return np.asarray(image.convert("RGB")).copy()
