"""storage/names.py copies resi_core.labels' name rules (storage may not import resi_core): they must agree."""

from __future__ import annotations

import pytest

from resi_core import labels
from resi_core.labels import LabelError
from storage import names
from storage.errors import InvalidInput

TRICKY = ["Person", "  traffic   light ", "traffic_light", "traffic-light", "Straße", "STRASSE", "ｆｕｌｌ",
          "e\u0301cole", "\u00e9cole", "שלט", "a" * 100, "a" * 101, "", "   ", "x\ty"]


@pytest.mark.parametrize("name", TRICKY)
def test_normalize_name_agrees(name: str) -> None:
    assert names.normalize_name(name) == labels.normalize_name(name)


@pytest.mark.parametrize("group", [["car", "Car"], ["traffic light", "traffic_light"], ["a" * 101], [" "],
                                   ["école", "e\u0301cole"], ["person", "pedestrian"], ["x\ty", "x y"]])
def test_check_class_names_agrees(group: list[str]) -> None:
    try:
        expected: list[str] | None = labels.check_class_names(group)
    except LabelError:
        expected = None
    try:
        got: list[str] | None = names.check_class_names(group)
    except InvalidInput:
        got = None
    assert got == expected
