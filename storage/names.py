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
