"""Class-name and label-space-name rules, for every package (storage, resi_core, app, train).

Names are stripped and inner whitespace collapsed. Empty, whitespace-only, longer than 100
characters, or duplicated after `normalize_name` (case folding, NFC, `_`/`-`/whitespace runs
become one space) are errors. A segment fused from several label spaces (ESF) stores them
joined with `+` ("street+adhoc").
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

from formats.errors import InvalidName

MAX_NAME_LEN = 100
SPACE_JOIN = "+"


def normalize_name(name: str) -> str:
    """Case-fold, NFC-normalize, turn `_`/`-` into spaces and collapse whitespace."""
    text = unicodedata.normalize("NFC", name).casefold()
    text = re.sub(r"[_\-]+", " ", text)
    return " ".join(text.split())


def check_name(raw: object, what: str = "class name") -> str:
    """One name, stripped with inner whitespace collapsed; InvalidName when it is not usable."""
    if not isinstance(raw, str):
        raise InvalidName(f"A {what} must be text, not {type(raw).__name__}.")
    name = " ".join(raw.split())
    if not name:
        raise InvalidName(f"A {what} is empty or only whitespace.")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(f"The {what} {name[:30]!r}... is longer than {MAX_NAME_LEN} characters.")
    return name


def check_class_names(names: Sequence[object], what: str = "class name", allow_empty: bool = False) -> list[str]:
    """The names cleaned (`check_name`); InvalidName on an empty list (unless allowed) or a duplicate."""
    if not names and not allow_empty:
        raise InvalidName(f"The {what} list is empty: give at least one.")
    cleaned: list[str] = []
    seen: dict[str, str] = {}
    for raw in names:
        name = check_name(raw, what)
        key = normalize_name(name)
        if key in seen:
            raise InvalidName(f"The {what} {name!r} is given twice (same as {seen[key]!r}).")
        seen[key] = name
        cleaned.append(name)
    return cleaned


def label_spaces_of(label_space: str) -> list[str]:
    """The label spaces of a stored segment: "street+adhoc" -> ["street", "adhoc"]."""
    return [part for part in label_space.split(SPACE_JOIN) if part]


def path_safe(name: str) -> str:
    """A file name for a label space: unsafe characters become "_", plus a short hash when any changed."""
    safe = re.sub(r"[^A-Za-z0-9 ._-]", "_", name).strip(" .") or "_"
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
