"""The decoded-photo and mask caches (app.services.ImageCache, MaskCache): kept by bytes, least recently used
dropped first.

20 annotators each on their own photo must not decode their photo again on every save: a cache that holds
a fixed count of photos, fewer than the users, missed on every access when they took turns.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from app.services import ImageCache, MaskCache
from formats.rle import decode_rle, encode_mask
from storage.files import FileStore


class CountingStore(FileStore):
    def __init__(self, root: Path):
        super().__init__(root)
        self.reads: list[str] = []

    def read(self, sha256: str) -> bytes:
        self.reads.append(sha256)
        return super().read(sha256)


def photos(store: FileStore, n: int) -> list[str]:
    """`n` different 32x24 PNGs stored; their hashes. Each decodes to 32*24*3 = 2304 bytes."""
    hashes = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.fromarray(np.full((24, 32, 3), i * 10, dtype=np.uint8)).save(buffer, format="PNG")
        hashes.append(store.put(buffer.getvalue())[0])
    return hashes


def test_twenty_photos_taken_in_turns_are_each_decoded_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    hashes = photos(store, 20)
    cache = ImageCache(store, budget_bytes=20 * 2304)
    for _ in range(3):
        for sha in hashes:
            assert cache.rgb(sha).shape == (24, 32, 3)
    assert sorted(store.reads) == sorted(hashes)


def test_over_the_budget_the_least_recently_used_photo_goes(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    a, b, c = photos(store, 3)
    cache = ImageCache(store, budget_bytes=2 * 2304)
    cache.rgb(a)
    cache.rgb(b)
    cache.rgb(a)  # a is now the most recently used: c pushes b out
    cache.rgb(c)
    store.reads.clear()
    cache.rgb(a)
    cache.rgb(c)
    assert store.reads == []
    cache.rgb(b)
    assert store.reads == [b]


def test_a_photo_larger_than_the_budget_is_still_kept_while_it_is_the_newest(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    (a,) = photos(store, 1)
    cache = ImageCache(store, budget_bytes=100)
    first = cache.rgb(a)
    assert cache.rgb(a) is first
    assert store.reads == [a]
    assert not first.flags.writeable  # shared between requests: nobody may draw on it


def test_a_mask_is_decoded_once_per_rle_and_shared_read_only() -> None:
    mask = np.zeros((48, 64), dtype=bool)
    mask[10:20, 5:40] = True
    other = ~mask
    cache = MaskCache(budget_bytes=10 * mask.size)
    first = cache.mask(encode_mask(mask))
    assert np.array_equal(first, mask) and first.dtype == bool
    assert cache.mask(encode_mask(mask)) is first  # the same RLE (a relabel keeps the mask): not decoded again
    second = cache.mask(encode_mask(other))
    assert np.array_equal(second, decode_rle(encode_mask(other))) and second is not first
    assert not first.flags.writeable
