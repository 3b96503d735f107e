"""Model input: resizing, normalization and the cache key (decoding is tests/formats/test_images.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resi_core.image_io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    image_hash,
    normalize,
    resize_for_model,
    to_pixel_values,
)


def test_resize_for_model_scales_long_side_and_pads():
    image = np.zeros((300, 1000, 3), dtype=np.uint8)
    resized, info = resize_for_model(image, 128)
    assert resized.shape == (38, 128, 3)
    assert info.original_hw == (300, 1000) and info.resized_hw == (38, 128) and info.padded_hw == (64, 128)
    assert info.valid_extent((16, 32)) == pytest.approx((16 * 38 / 64, 32))
    assert info.valid_fraction == pytest.approx((38 / 64, 1.0))  # 26 padded rows below the image
    small, info = resize_for_model(np.zeros((20, 10, 3), dtype=np.uint8), 128)
    assert small.shape == (20, 10, 3) and info.padded_hw == (32, 32) and info.scale == 1.0
    # upscale: a small image is scaled up as training scales it (long side = max_size).
    up, info = resize_for_model(np.zeros((20, 10, 3), dtype=np.uint8), 128, upscale=True)
    assert up.shape == (128, 64, 3) and info.padded_hw == (128, 64) and info.original_hw == (20, 10)
    big, _ = resize_for_model(image, 128, upscale=True)
    assert big.shape == (38, 128, 3)  # a large image is scaled down either way


def test_normalize_and_pixel_values():
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0] = 255
    values = to_pixel_values(image, padded_hw=(4, 3))
    assert values.shape == (1, 3, 4, 3) and values.dtype == torch.float32
    assert values[0, 0, 0, 0].item() == pytest.approx((1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0])
    assert values[0, 1, 0, 0].item() == pytest.approx(-IMAGENET_MEAN[1] / IMAGENET_STD[1])
    assert (values[0, :, 2:] == 0).all()  # padding
    batch = normalize(torch.full((2, 3, 1, 1), 0.5))
    assert batch.shape == (2, 3, 1, 1)


def test_image_hash_depends_on_shape_and_content():
    a = np.zeros((2, 6, 3), dtype=np.uint8)
    assert image_hash(a) == image_hash(a.copy())
    assert image_hash(a) != image_hash(a.reshape(4, 3, 3))
    b = a.copy()
    b[0, 0, 0] = 1
    assert image_hash(a) != image_hash(b)
