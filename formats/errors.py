"""The errors a user can cause with a file or a name (each message names the file, entry and fault)."""

from __future__ import annotations


class FormatError(ValueError):
    """A ground-truth, prediction or panoptic file that breaks the contract in docs/FORMATS.md."""


class InvalidName(ValueError):
    """A class or label-space name that breaks the name rules (formats.names)."""
