"""Class-name rules.

A copy of `resi_core.labels.check_class_names` / `normalize_name` (storage must not import
resi_core): keep the two in step. Names are stripped and inner whitespace collapsed; empty,
whitespace-only, longer than 100 characters, or duplicated after case folding and
`_`/`-`/whitespace normalisation are errors.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from storage.errors import InvalidInput

MAX_NAME_LEN = 100
# A segment fused from several label spaces (ESF) stores them joined: "street+adhoc".
SPACE_JOIN = "+"


def label_spaces_of(label_space: str) -> list[str]:
    """The label spaces of a stored segment: "street+adhoc" -> ["street", "adhoc"]."""
    return [part for part in label_space.split(SPACE_JOIN) if part]


def path_safe(name: str) -> str:
    """A file name for a label space: unsafe characters become "_", plus a short hash when any changed."""
    import hashlib

    safe = re.sub(r"[^A-Za-z0-9 ._-]", "_", name).strip(" .") or "_"
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def normalize_name(name: str) -> str:
    text = unicodedata.normalize("NFC", name).casefold()
    text = re.sub(r"[_\-]+", " ", text)
    return " ".join(text.split())


def check_name(raw: object, what: str = "class name") -> str:
    if not isinstance(raw, str):
        raise InvalidInput(f"A {what} must be text, not {type(raw).__name__}.")
    name = " ".join(raw.split())
    if not name:
        raise InvalidInput(f"A {what} is empty or only whitespace.")
    if len(name) > MAX_NAME_LEN:
        raise InvalidInput(f"The {what} {name[:30]!r}... is longer than {MAX_NAME_LEN} characters.")
    return name


def check_class_names(names: Sequence[object], what: str = "class name", allow_empty: bool = False) -> list[str]:
    """Return the names cleaned; raise InvalidInput on empty, too long or duplicated ones."""
    if not names and not allow_empty:
        raise InvalidInput(f"The {what} list is empty: give at least one.")
    cleaned: list[str] = []
    seen: dict[str, str] = {}
    for raw in names:
        name = check_name(raw, what)
        key = normalize_name(name)
        if key in seen:
            raise InvalidInput(f"The {what} {name!r} is given twice (same as {seen[key]!r}).")
        seen[key] = name
        cleaned.append(name)
    return cleaned
