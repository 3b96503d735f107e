"""Uploaded files and zips of images: what is kept, what is refused, and what a lying zip costs."""

from __future__ import annotations

import struct
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from storage.uploads import MAX_ZIP_MEMBERS, TooLarge, read_capped, upload_items, zip_members
from tests.storage.helpers import png_bytes

MB = 2**20


def _lying_zip(path: Path, inflated: int, claimed: int) -> None:
    """A zip with one deflated member of `inflated` zero bytes whose headers claim `claimed` bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", bytes(inflated))
    data = bytearray(path.read_bytes())
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, claimed)  # uncompressed size, local file header
    struct.pack_into("<I", data, central + 24, claimed)  # uncompressed size, central directory
    path.write_bytes(bytes(data))


def test_files_and_zip_members(tmp_path: Path) -> None:
    single = tmp_path / "a.png"
    single.write_bytes(png_bytes(8, 8, seed=1))
    big = tmp_path / "big.png"
    big.write_bytes(bytes(2000))
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("b.png", png_bytes(8, 8, seed=2))
        zf.writestr("notes.txt", "hello")
        zf.writestr("dir/", "")
        zf.writestr("__MACOSX/._b.png", "junk")
        zf.writestr("huge.png", bytes(2000))
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    items = dict(upload_items([single, big, archive, damaged, tmp_path / "gone.png"], max_bytes=1000))
    assert items["a.png"] == png_bytes(8, 8, seed=1) and items["more.zip/b.png"] == png_bytes(8, 8, seed=2)
    assert items["big.png"] == "larger than the 1000 byte limit."
    assert items["more.zip/huge.png"] == "larger than the 1000 byte limit."
    assert items["more.zip/notes.txt"] == "not an image file name (skipped)."
    assert items["damaged.zip"] == "the zip file is damaged."
    assert "gone" in items["gone.png"]
    assert set(items) == {"a.png", "big.png", "more.zip/b.png", "more.zip/notes.txt", "more.zip/huge.png",
                          "damaged.zip", "gone.png"}


def test_too_many_members(tmp_path: Path) -> None:
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(MAX_ZIP_MEMBERS + 1):
            zf.writestr(f"{i}.png", b"")
    assert list(zip_members(archive, MB)) == [("many.zip", f"the zip holds {MAX_ZIP_MEMBERS + 1} files, more "
                                                            f"than {MAX_ZIP_MEMBERS}.")]


def test_a_zip_that_lies_about_its_sizes_is_refused_before_it_costs_memory(tmp_path: Path) -> None:
    """64 MB of zeros claimed to be 1 KB: reading it whole (ZipFile.read) would inflate all 64 MB in one go.
    The capped reader inflates 64 KB at a time and stops at the claimed size or the cap, whichever is first."""
    inflated, cap = 64 * MB, MB
    for claimed in (1000, cap):  # smaller than the cap, and just at it
        archive = tmp_path / f"bomb-{claimed}.zip"
        _lying_zip(archive, inflated, claimed)
        tracemalloc.start()
        try:
            [(name, reason)] = list(zip_members(archive, cap))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert name == f"{archive.name}/bomb.png"
        assert isinstance(reason, str) and "cannot be read from the zip" in reason  # the CRC of what it claims fails
        assert peak < cap + 4 * MB, f"peak {peak / MB:.1f} MB while refusing it"


def test_the_reader_stops_at_the_cap(tmp_path: Path) -> None:
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", bytes(3 * MB))
    with zipfile.ZipFile(archive) as zf:
        [member] = zf.infolist()
        assert read_capped(zf, member, 3 * MB) == bytes(3 * MB)
        with pytest.raises(TooLarge):
            read_capped(zf, member, MB)
