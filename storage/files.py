"""Content-addressed image store and image validation.

Each image is stored once, as `<root>/<sha[:2]>/<sha>`, whatever its original name; the
database keeps the hash, byte size, original name and EXIF orientation, never the pixels.
Pixels are decoded by `formats.images.decode_image` (the one decoder), never here.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from formats.images import MAX_PIXELS, exif_orientation, upright_size
from storage.errors import InvalidInput

MAX_BYTES = 200 * 1024 * 1024
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"}


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    byte_size: int
    format: str
    width: int  # after EXIF orientation is applied
    height: int
    exif_orientation: int  # 1..8, 1 = as stored


def inspect_image(data: bytes, max_pixels: int = MAX_PIXELS) -> ImageInfo:
    """Check that `data` is a whole image of reasonable size and read its corrected size.

    Raises InvalidInput for a file that is not an image, a truncated one, or one larger than
    `max_pixels` (checked on the header, before any pixel is decoded).
    """
    if not data:
        raise InvalidInput("The file is empty.")
    if len(data) > MAX_BYTES:
        raise InvalidInput(f"The file is larger than {MAX_BYTES // 2**20} MB.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
                width, height = img.size
                if width * height > max_pixels:
                    raise InvalidInput(
                        f"The image is {width}x{height} = {width * height / 1e6:.1f} MP, more than the "
                        f"{max_pixels / 1e6:.0f} MP limit."
                    )
                img.verify()
            # verify() checks structure only; decoding every pixel catches truncated data.
            with Image.open(io.BytesIO(data)) as img:
                orientation = exif_orientation(img)
                img.load()
    except InvalidInput:
        raise
    except Image.DecompressionBombError as exc:
        raise InvalidInput(f"The image is too large to open safely: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise InvalidInput("The file is not an image (or not a format we can read).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"The image is damaged or truncated: {exc}") from exc
    if fmt not in ALLOWED_FORMATS:
        raise InvalidInput(f"Image format {fmt or 'unknown'} is not supported; use JPEG, PNG or WEBP.")
    width, height = upright_size(width, height, orientation)
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        byte_size=len(data),
        format=fmt,
        width=width,
        height=height,
        exif_orientation=orientation,
    )


class FileStore:
    """Image bytes under `root`, addressed by SHA-256. Writes are atomic and fsynced."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None) -> tuple[str, bool]:
        """Store `data`; return (sha256, written). An existing copy is kept and not rewritten."""
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.is_file():
            return sha256, False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha256, True

    def read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"Image {sha256} is missing from the file store {self.root}.") from exc


def path_sha256(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and bytes, in sorted order): names model versions."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
