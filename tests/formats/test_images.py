"""The one image decoder (formats.images): conversion to RGB uint8 HWC and file decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from formats.images import ImageError, decode_image, to_rgb_uint8


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
    assert np.array_equal(decode_image(data), array)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert np.array_equal(decode_image(path), array)
    assert np.array_equal(decode_image(str(path)), array)


def test_load_image_applies_exif_orientation():
    image = Image.new("RGB", (8, 4), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    loaded = decode_image(png_bytes(image, "JPEG", exif=exif.tobytes()))
    assert loaded.shape == (8, 4, 3)


def test_load_image_errors(tmp_path):
    with pytest.raises(ImageError, match="No such image"):
        decode_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"definitely not an image")
    data = png_bytes(Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)), "JPEG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])
    big = png_bytes(Image.new("L", (100, 100)))
    with pytest.raises(ImageError, match="pixel limit"):
        decode_image(big, max_pixels=9_999)
