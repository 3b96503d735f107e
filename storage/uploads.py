"""Uploaded files as (name, bytes) to store, or (name, reason) for what is refused: images, and zips of images.

A zip is read member by member, each through a streaming cap: at most `max_bytes` of a member are ever
held, whatever size the zip's directory claims, so a zip that lies about its members' sizes (a
decompression bomb) costs `max_bytes` of memory before it is refused, not what it inflates to.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from formats.images import IMAGE_SUFFIXES

MAX_ZIP_MEMBERS = 5000
CHUNK = 1 << 16  # bytes inflated per read: what one read may cost beyond the cap


class TooLarge(Exception):
    """A member inflated past the cap."""


def _limit(max_bytes: int) -> str:
    size = f"{max_bytes // 2**20} MB" if max_bytes >= 2**20 else f"{max_bytes} byte"
    return f"larger than the {size} limit"


def read_capped(archive: zipfile.ZipFile, member: zipfile.ZipInfo, max_bytes: int) -> bytes:
    """A member's bytes, read in chunks; TooLarge as soon as more than `max_bytes` came out."""
    chunks: list[bytes] = []
    size = 0
    with archive.open(member) as fh:
        while chunk := fh.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def zip_members(path: Path, max_bytes: int) -> Iterator[tuple[str, bytes | str]]:
    """(name, bytes) per image in a zip, or (name, reason) for a member that is refused."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
        yield path.name, "the zip file is damaged."
        return
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not m.filename.startswith("__MACOSX/")]
        if len(members) > MAX_ZIP_MEMBERS:
            yield path.name, f"the zip holds {len(members)} files, more than {MAX_ZIP_MEMBERS}."
            return
        for member in members:
            name = f"{path.name}/{member.filename}"
            if Path(member.filename).suffix.lower() not in IMAGE_SUFFIXES:
                yield name, "not an image file name (skipped)."
            elif member.file_size > max_bytes:
                yield name, f"{_limit(max_bytes)}."
            else:
                try:
                    data = read_capped(archive, member, max_bytes)
                except TooLarge:
                    yield name, f"{_limit(max_bytes)} (the zip claims {member.file_size} bytes)."
                    continue
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                    yield name, f"cannot be read from the zip (damaged: {exc})."
                    continue
                except (RuntimeError, NotImplementedError) as exc:  # encrypted, or an unsupported compression
                    yield name, f"cannot be read from the zip ({exc})."
                    continue
                yield name, data


def upload_items(paths: Sequence[str | Path], max_bytes: int) -> Iterable[tuple[str, bytes | str]]:
    """Each uploaded file (each image of a zip) as (name, bytes), or (name, why it is refused)."""
    for raw in paths:
        path = Path(raw)
        try:
            size = path.stat().st_size
        except OSError:
            yield path.name, "the uploaded file is gone (upload it again)."
            continue
        if path.suffix.lower() == ".zip":
            yield from zip_members(path, max_bytes)
        elif size > max_bytes:
            yield path.name, f"{_limit(max_bytes)}."
        else:
            yield path.name, path.read_bytes()
