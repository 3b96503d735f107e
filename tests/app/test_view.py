"""The Label tab's values: the annotated image is a Gradio update only when its color map must change."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from app.context import UserState
from app.labeling.images import ImageView
from app.labeling.view import MAX_LEGEND, label_tab
from app.segments import SegmentView


def _view(*classes: str) -> ImageView:
    mask = np.zeros((8, 8), dtype=bool)
    mask[:4, :4] = True
    segments = [SegmentView(f"id{i}", name, "adhoc", mask) for i, name in enumerate(classes)]
    return ImageView(1, "a.png", "in_review", 3, np.zeros((8, 8, 3), dtype=np.uint8), segments, True, False)


def test_the_color_map_is_sent_only_when_a_new_label_appears() -> None:
    state = UserState(project_id=1, image_id=1)
    first = label_tab(state, _view("cat", "dog"), None, [])
    state, annotated = first[0], first[1]
    assert isinstance(annotated, dict) and annotated["__type__"] == "update"  # the first view sets the colors
    assert set(annotated["color_map"]) == {"cat [adhoc] #id0", "dog [adhoc] #id1"}
    again = label_tab(state, _view("cat", "dog"), None, [])
    assert isinstance(again[1], tuple) and again[0].legend == state.legend  # same labels: the image alone
    relabeled = label_tab(state, _view("bird", "dog"), None, [])
    assert relabeled[1]["__type__"] == "update" and "bird [adhoc] #id0" in relabeled[1]["color_map"]
    assert "cat [adhoc] #id0" in relabeled[1]["color_map"]  # earlier labels keep their colors
    back = label_tab(relabeled[0], _view("cat", "dog"), None, [])
    assert isinstance(back[1], tuple)  # relabeling back needs no new map


def test_the_legend_starts_over_when_it_grows_too_large() -> None:
    state = replace(UserState(), legend=frozenset((f"label {i}", "#000000") for i in range(MAX_LEGEND)))
    out = label_tab(state, _view("cat"), None, [])
    assert out[0].legend == frozenset({("cat [adhoc] #id0", out[1]["color_map"]["cat [adhoc] #id0"])})
