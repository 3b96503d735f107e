"""Where the shared real data (coco128, read in place, never copied) lives.

The repository normally sits beside `shared/` (../shared/data/coco128); a clone elsewhere finds it at
/work/shared/data/coco128, or wherever RESI_COCO128 points.
"""

from __future__ import annotations

import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("RESI_COCO128"),
    Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128",
    "/work/shared/data/coco128",
]
COCO128 = next((Path(p) for p in _CANDIDATES if p and Path(p).is_dir()), Path("/work/shared/data/coco128"))
COCO128_IMAGES = COCO128 / "images" / "train2017"
