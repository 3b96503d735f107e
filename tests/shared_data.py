"""Where the shared real data (coco128, read in place, never copied) lives.

Only two places are looked at: the folder named by the environment variable RESI_COCO128, or
`../shared/data/coco128` beside the repository. No machine's absolute path is built in. When
neither exists, tests that need the photos skip with `MISSING`, and scripts stop with it.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "RESI_COCO128"
BESIDE_REPO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def _locate() -> tuple[Path, str | None]:
    """(folder, None) when found, else (where it was looked for, why it is missing)."""
    named = os.environ.get(ENV_VAR)
    if named:
        path = Path(named).expanduser()
        if path.is_dir():
            return path, None
        return path, f"{ENV_VAR}={named} is not a folder; point it at coco128 (images/, annotations_instances/, panoptic/)."
    if BESIDE_REPO.is_dir():
        return BESIDE_REPO, None
    return BESIDE_REPO, (
        f"coco128 is not beside the repository ({BESIDE_REPO}); set {ENV_VAR} to the coco128 folder "
        "(images/, annotations_instances/, panoptic/)."
    )


COCO128, MISSING = _locate()
COCO128_IMAGES = COCO128 / "images" / "train2017"


def coco128_dir() -> Path:
    """The coco128 folder; inside a test, skips with `MISSING` when it is not there."""
    if MISSING:
        import pytest

        pytest.skip(MISSING)
    return COCO128


def coco128_photos(n: int | None = None) -> list[Path]:
    """The first n coco128 photos (sorted by name); skips the test when there are none."""
    photos = sorted((coco128_dir() / "images" / "train2017").glob("*.jpg"))
    if not photos:
        import pytest

        pytest.skip(f"No photos under {COCO128_IMAGES}; set {ENV_VAR} to the coco128 folder.")
    return photos[:n] if n is not None else photos


def needs_coco128(test):
    """Decorator: skip the test, with the message that says which variable to set, when coco128 is missing."""
    import pytest

    return pytest.mark.skipif(MISSING is not None, reason=MISSING or "")(test)
