"""Label Studio's brush RLE: how its `brushlabels` results hold a mask (`value.rle`, a list of bytes).

The bytes are a bit stream (most significant bit first), the format of thi.ng's rle-pack that Label
Studio's editor and label_studio_converter.brush use:
- 32 bits: the number of values N, which is H·W·4 (the mask as an RGBA image, row by row);
- 5 bits: word size − 1 (8: each value is a byte); 4 × 4 bits: the four run-length field sizes − 1
  (3, 4, 8, 16 bits here);
- then runs until N values are read: 1 bit "repeat", 2 bits choosing a field size, that many bits
  holding (run length − 1), then either one word repeated over the run (repeat = 1) or one word per
  value (repeat = 0);
- zero bits up to a whole byte.
A pixel belongs to the mask when its alpha (the 4th value) is not 0; masks are written with 255 in
all four values, as label_studio_converter.brush.mask2rle writes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from formats.errors import FormatError

WORD_BITS = 8
RUN_FIELD_BITS = (3, 4, 8, 16)


def encode(mask: np.ndarray) -> list[int]:
    """Bool mask [H, W] -> Label Studio brush RLE (a list of byte values)."""
    if mask.ndim != 2:
        raise ValueError(f"a brush mask is [H, W], got shape {mask.shape}")
    values = np.repeat(np.where(mask.reshape(-1), 255, 0).astype(np.uint8), 4)  # [H*W*4] RGBA
    n = len(values)
    fields: list[tuple[int, int]] = [(n, 32), (WORD_BITS - 1, 5), *((b - 1, 4) for b in RUN_FIELD_BITS)]
    if n:
        starts = np.flatnonzero(np.diff(values)) + 1
        bounds = np.concatenate([[0], starts, [n]])
        for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            length, value = end - start, int(values[start])
            while length:
                chunk = min(length, 1 << RUN_FIELD_BITS[-1])
                index = next(i for i, b in enumerate(RUN_FIELD_BITS) if chunk - 1 < 1 << b)
                fields += [(1, 1), (index, 2), (chunk - 1, RUN_FIELD_BITS[index]), (value, WORD_BITS)]
                length -= chunk
    bits = "".join(format(value, f"0{width}b") for value, width in fields)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits, 2).to_bytes(len(bits) // 8, "big")) if bits else []


def decode(rle: Sequence[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> bool mask [H, W] (alpha != 0); FormatError when it is not one of H x W."""
    try:
        data = bytes(rle)
    except (TypeError, ValueError):
        raise FormatError("a brush RLE must be a list of byte values (0..255)") from None
    bits = format(int.from_bytes(data, "big"), f"0{len(data) * 8}b") if data else ""
    position = 0

    def read(width_bits: int) -> int:
        nonlocal position
        if position + width_bits > len(bits):
            raise FormatError("the brush RLE ends before its last run")
        position += width_bits
        return int(bits[position - width_bits:position], 2)

    n = read(32)
    if n != height * width * 4:
        raise FormatError(f"the brush RLE holds {n} values, a {width}x{height} RGBA image has {height * width * 4}")
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(n, dtype=np.uint32)
    i = 0
    while i < n:
        repeat = read(1)
        j = min(n, i + 1 + read(sizes[read(2)]))
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out.reshape(height, width, 4)[..., 3] != 0
