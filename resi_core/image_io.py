"""Image conversion at the edge: everything becomes an RGB uint8 HWC numpy array.

Formats: images are `np.ndarray` HWC uint8 RGB after `to_rgb_uint8`; model input is a
float32 tensor [1, 3, H, W] normalized with ImageNet mean/std; hashes are hex strings.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# 80 MP: above any camera a labeler uses, below what a decompression bomb needs to hurt.
MAX_PIXELS = 80_000_000

ImageLike = np.ndarray | Image.Image


# File name suffixes of the image formats a folder of images is read with (Pillow reads them all).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class ImageError(ValueError):
    """An image a user gave that cannot be used (empty, wrong shape, corrupt, too large)."""


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """Convert an array or PIL image to RGB uint8 HWC.

    Accepted arrays: HxW (grayscale), HxWx1, HxWx2 (gray + alpha), HxWx3 (RGB), HxWx4 (RGBA).
    - bool: False/True → 0/255.
    - uint8 is taken as is; uint16 (16-bit) is scaled by 255/65535. Other integer types
      are taken as 8-bit when they fit in [0, 255] and as 16-bit when they fit in [0, 65535].
    - float: [0, 1] when the maximum is at most 1, else [0, 255]; values are clipped.
    - Alpha is composited on white, as an image viewer shows a transparent PNG; the color
      under fully transparent pixels is often arbitrary, so dropping alpha would expose it.
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


def load_image(source: str | Path | bytes, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file (path or raw bytes) as RGB uint8 HWC, upright per its EXIF orientation.

    The pixel count is checked from the header before decoding, so a decompression bomb
    is refused without being decoded. Raises ImageError for missing, non-image, truncated
    or oversized files.
    """
    name = "the uploaded data" if isinstance(source, bytes) else str(source)
    try:
        opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
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
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise ImageError(f"{name} is truncated or corrupt: {err}.") from err
        return to_rgb_uint8(image)


@dataclass(frozen=True)
class ResizeInfo:
    """How an image was prepared for the model.

    original_hw: the caller's image; resized_hw: after scaling the long side to at most
    max_size (never up); padded_hw: after zero-padding bottom/right to a multiple of the
    size divisor. The resized image occupies rows [0, resized_h) and columns [0, resized_w).
    """

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]

    @property
    def scale(self) -> float:
        """resized / original length (≤ 1 unless upscaled)."""
        return self.resized_hw[0] / self.original_hw[0]

    @property
    def valid_fraction(self) -> tuple[float, float]:
        """Share of the padded rows and columns that hold the image (the rest is padding)."""
        return self.resized_hw[0] / self.padded_hw[0], self.resized_hw[1] / self.padded_hw[1]

    def valid_extent(self, feature_hw: tuple[int, int]) -> tuple[float, float]:
        """Extent (rows, cols) of a feature map of size `feature_hw` that covers the image, not padding."""
        return (
            feature_hw[0] * self.resized_hw[0] / self.padded_hw[0],
            feature_hw[1] * self.resized_hw[1] / self.padded_hw[1],
        )


def resize_for_model(
    image: np.ndarray, max_size: int, size_divisor: int = 32, upscale: bool = False
) -> tuple[np.ndarray, ResizeInfo]:
    """Scale RGB uint8 HWC so its long side is at most `max_size` (antialiased); with `upscale`, a
    smaller image is scaled up so its long side is `max_size`, as training scales every image.

    Returns the resized (unpadded) HWC uint8 image and the ResizeInfo; `to_pixel_values`
    pads it to `info.padded_hw`.
    """
    if max_size < 1 or size_divisor < 1:
        raise ValueError("max_size and size_divisor must be positive.")
    h, w = image.shape[:2]
    scale = max_size / max(h, w) if upscale else min(1.0, max_size / max(h, w))
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    padded = (
        math.ceil(new_h / size_divisor) * size_divisor,
        math.ceil(new_w / size_divisor) * size_divisor,
    )
    return image, ResizeInfo(original_hw=(h, w), resized_hw=(new_h, new_w), padded_hw=padded)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalize RGB float values in [0, 1]; `pixels` is [..., 3, H, W]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    return (pixels - mean) / std


def to_pixel_values(image: np.ndarray, padded_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB uint8 HWC → normalized float32 [1, 3, H, W], zero-padded (after normalizing) to `padded_hw`."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255.0  # [3, H, W]
    pixels = normalize(pixels)
    if padded_hw is not None:
        pad_h, pad_w = padded_hw[0] - pixels.shape[1], padded_hw[1] - pixels.shape[2]
        if pad_h < 0 or pad_w < 0:
            raise ValueError(f"padded_hw {padded_hw} is smaller than the image {tuple(pixels.shape[1:])}.")
        pixels = torch.nn.functional.pad(pixels, (0, pad_w, 0, pad_h))
    return pixels[None]  # [1, 3, H, W]


def image_hash(image: np.ndarray) -> str:
    """sha1 hex of an array's shape, dtype and bytes: the predictor's cache key."""
    digest = hashlib.sha1(f"{image.shape}|{image.dtype}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()
