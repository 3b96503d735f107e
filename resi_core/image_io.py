"""Model input from RGB uint8 HWC images (decoded by `formats.images`, the one decoder).

Model input is a float32 tensor [1, 3, H, W] normalized with ImageNet mean/std; hashes are hex strings.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
