"""What the Label tab shows and how it is selected: clicks on the picture, toggles, the score threshold.

The fake model of conftest.py proposes, on a 64x48 image with the street + drive class set: person
(rows 0-23, score 0.9) and car (rows 24-47, right half, 0.8) of street; pedestrian (rows 1-23, 0.9)
and vehicle (rows 25-47, right half, 0.8) of drive. Person and pedestrian overlap; the pedestrian,
one row smaller, is drawn on top.
"""

from __future__ import annotations

from dataclasses import replace

from app.context import UserState, class_options, find_option, load_context
from app.labeling.edits import delete_shown_like, relabel, select_at, undo
from app.labeling.images import load_image, visible_segments
from app.labeling.propose import propose
from app.labeling.view import segment_rows, title
from app.render import display_shape
from app.services import Services

# The 64x48 image is drawn at 512x384 (app.render.DISPLAY_MIN_SIDE): clicks are in the picture's pixels.
SCALE = display_shape((48, 64))[1] // 64


def at(x: int, y: int) -> tuple[int, int]:
    """The picture's point over image pixel (x, y)."""
    return x * SCALE + SCALE // 2, y * SCALE + SCALE // 2


def proposed(svc: Services, project: UserState) -> UserState:
    return propose(svc, project, "ann").state


def by_class(svc: Services, state: UserState) -> dict[str, str]:
    _, view = load_image(svc, state)
    return {s.class_name: s.id for s in view.segments}


def test_a_click_selects_the_topmost_and_a_second_click_the_one_under_it(svc: Services, project: UserState) -> None:
    state = proposed(svc, project)
    ids = by_class(svc, state)
    picked = []
    for _ in range(3):
        state, _ = select_at(svc, state, at(10, 10))
        picked.append(state.selected_id)
    assert picked == [ids["pedestrian"], ids["person"], ids["pedestrian"]]
    state, _ = select_at(svc, state, at(10, 0))  # row 0: the person alone
    assert state.selected_id == ids["person"]
    state, _ = select_at(svc, state, at(60, 40))  # another spot: the topmost there
    assert state.selected_id == ids["vehicle"]
    state, _ = select_at(svc, state, at(60, 10))  # nothing there: the selection is cleared
    assert state.selected_id is None


def test_hidden_spaces_and_weak_proposals_are_not_shown_nor_clicked(svc: Services, project: UserState) -> None:
    state = proposed(svc, project)
    ids = by_class(svc, state)
    hidden = replace(state, hidden_spaces=frozenset({"drive"}))
    state_, view = load_image(svc, hidden)
    assert {s.class_name for s in visible_segments(view.segments, state_)} == {"person", "car"}
    assert select_at(svc, hidden, at(10, 10))[0].selected_id == ids["person"]
    weak = replace(state, min_score=0.85)
    state_, view = load_image(svc, weak)
    assert {s.class_name for s in visible_segments(view.segments, state_)} == {"person", "pedestrian"}
    assert [row[0] for row in segment_rows(view, state_)] == ["person 1", "pedestrian 1"]
    assert "4 segment(s), 2 hidden" in title(view, state_)
    assert select_at(svc, weak, at(60, 40))[0].selected_id is None
    # Hidden, not deleted: lowering the threshold shows them again.
    assert len(visible_segments(view.segments, replace(state_, min_score=0.0))) == 4


def test_a_relabelled_segment_shows_even_in_a_space_that_was_hidden(svc: Services, project: UserState) -> None:
    state = replace(proposed(svc, project), hidden_spaces=frozenset({"drive"}))
    options = class_options(svc, load_context(svc, state))
    person = by_class(svc, state)["person"]
    result = relabel(svc, state, "ann", person, find_option(options, "vehicle [drive]"))
    assert result.ok and result.state.hidden_spaces == frozenset()
    shown = visible_segments(result.view.segments, result.state)
    assert person in {s.id for s in shown}
    # The spaces to toggle never shrink while the image is open, so a stale tick is always a choice.
    assert result.state.spaces == ("drive", "street")


def test_delete_all_shown_of_a_class_keeps_the_hidden_ones_and_is_one_undo(svc: Services, project: UserState) -> None:
    state = replace(proposed(svc, project), min_score=0.85)
    options = class_options(svc, load_context(svc, state))
    ids = by_class(svc, state)
    state = relabel(svc, state, "ann", ids["car"], find_option(options, "person [street]")).state  # score 0.8
    result = delete_shown_like(svc, state, "ann", ids["person"])
    assert result.ok and "Deleted 1 shown person [street]" in result.message
    left = {s.id: s for s in result.view.segments}
    assert ids["person"] not in left and left[ids["car"]].class_name == "person"  # the hidden weak one stays
    back = undo(svc, result.state, "ann")
    assert ids["person"] in {s.id for s in back.view.segments}
