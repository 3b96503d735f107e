"""Finding the browser for the Playwright tests. Tests install nothing: scripts/test.sh installs Debian's
Chromium when it can. Locally a missing browser skips the browser tests; in CI (CI=true) it is a failure,
because a skipped browser test would let a broken UI land."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def chromium_executable() -> str:
    """Path of Chromium (RESI_CHROMIUM, else Debian's); skips the test locally, fails it in CI."""
    candidates = [os.environ.get("RESI_CHROMIUM"), *CHROMIUM_CANDIDATES, shutil.which("chromium")]
    found = next((c for c in candidates if c and Path(c).is_file()), None)
    if found:
        return found
    message = (
        "Chromium is not installed (looked for RESI_CHROMIUM, /usr/bin/chromium). `make test` installs it "
        "with apt-get when run as root; otherwise `apt-get install chromium` or set RESI_CHROMIUM."
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI=true: the browser tests must run. {message}")
    pytest.skip(message)
    raise AssertionError("unreachable")
