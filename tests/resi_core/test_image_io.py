"""Image conversion to RGB uint8 HWC, loading, resizing and normalization."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from resi_core.image_io import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    image_hash,
    load_image,
    normalize,
    resize_for_model,
    to_pixel_values,
    to_rgb_uint8,
)


def png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_grayscale_becomes_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgb = to_rgb_uint8(gray)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb == gray[:, :, None]).all()
    assert to_rgb_uint8(gray[:, :, None]).shape == (3, 4, 3)


def test_rgba_composites_on_white():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, 0] = 200  # red
    rgba[0, :, 3] = [0, 255, 128]
    rgb = to_rgb_uint8(rgba)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # transparent → white
    assert rgb[0, 1].tolist() == [200, 0, 0]  # opaque → its color
    assert rgb[0, 2].tolist() == [227, 127, 127]  # half: between red and white
    assert to_rgb_uint8(Image.fromarray(rgba, "RGBA"))[0, 0].tolist() == [255, 255, 255]


def test_16bit_float_bool_and_wide_integers_are_scaled():
    deep = np.array([[0, 257 * 10, 65535]], dtype=np.uint16)
    assert to_rgb_uint8(deep)[0, :, 0].tolist() == [0, 10, 255]
    assert to_rgb_uint8(np.array([[0.0, 0.5, 1.0]]))[0, :, 1].tolist() == [0, 128, 255]
    assert to_rgb_uint8(np.array([[0.0, 127.0, 255.0]], dtype=np.float32))[0, :, 2].tolist() == [0, 127, 255]
    assert to_rgb_uint8(np.array([[False, True]]))[0, :, 0].tolist() == [0, 255]
    assert to_rgb_uint8(np.array([[0, 200]], dtype=np.int64))[0, :, 0].tolist() == [0, 200]
    assert to_rgb_uint8(np.array([[0, 65535]], dtype=np.int32))[0, :, 0].tolist() == [0, 255]


def test_pil_modes_are_converted():
    for mode in ["L", "P", "CMYK", "YCbCr", "LA", "1", "I", "F", "I;16"]:
        image = Image.new(mode, (5, 3))
        rgb = to_rgb_uint8(image)
        assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8, mode
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert to_rgb_uint8(deep).min() == 255


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 5), dtype=np.uint8), "no pixels"),
        (np.zeros((4, 0, 3), dtype=np.uint8), "no pixels"),
        (np.zeros(5, dtype=np.uint8), "shape"),
        (np.zeros((2, 2, 3, 1), dtype=np.uint8), "shape"),
        (np.zeros((2, 2, 5), dtype=np.uint8), "shape"),
        (np.array([[np.nan, 0.0]]), "NaN"),
        (np.array([[-1, 3]], dtype=np.int16), "span"),
        (np.zeros((2, 2), dtype=np.complex64), "dtype"),
        ([[1, 2]], "Expected an image"),
    ],
)
def test_unusable_input_raises_image_error(bad, message):
    with pytest.raises(ImageError, match=message):
        to_rgb_uint8(bad)


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_load_image_from_bytes_and_path(tmp_path):
    array = np.random.default_rng(0).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    data = png_bytes(Image.fromarray(array))
    assert np.array_equal(load_image(data), array)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert np.array_equal(load_image(path), array)
    assert np.array_equal(load_image(str(path)), array)


def test_load_image_applies_exif_orientation():
    image = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = load_image(png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert loaded.shape == (8, 4, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageError, match="No such image"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"definitely not an image")
    data = png_bytes(Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])
    big = png_bytes(Image.new("L", (100, 100)))
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(big, max_pixels=9_999)


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
