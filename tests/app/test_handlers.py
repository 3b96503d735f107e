"""Each step of the labeling flow through the same handler functions the UI calls."""

from __future__ import annotations

import time
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.class_sets.handlers import current_class_set, save_class_set, suggest_synonyms
from app.context import UserState, class_options, find_option, load_context, model_version_id, on_image
from app.editing import BrushMode
from app.labeling.accept import accept
from app.labeling.edits import (
    add_segment,
    delete_segment,
    edit_mask,
    merge_segments,
    redo,
    relabel,
    save_pending_anyway,
    undo,
)
from app.labeling.images import (
    delete_image,
    load_image,
    next_open_image,
    open_image,
    skip_image,
    visible_segments,
)
from app.labeling.propose import domain_note, propose
from app.projects.handlers import create_project, open_project, project_names, project_overview
from app.projects.upload import upload_images
from app.quality.handlers import quality
from app.services import Services, UserError
from formats.rle import encode_mask
from resi_core.labels import LabelError
from storage.errors import InvalidInput
from tests.app.conftest import FakeModel, image_bytes, write_image


def brush(shape: tuple[int, int], rows: slice, cols: slice) -> dict:
    layer = np.zeros((*shape, 4), dtype=np.uint8)
    layer[rows, cols] = (255, 0, 255, 255)
    return {"background": None, "layers": [layer], "composite": None}


def test_projects_create_open_and_list(svc: Services) -> None:
    state = create_project(svc, "birds")
    assert project_names(svc) == ["birds"]
    assert open_project(svc, "birds").project_id == state.project_id
    with pytest.raises(InvalidInput, match="exists already"):
        create_project(svc, "birds")
    overview = project_overview(svc, state)
    assert overview.counts["new"] == 0 and "0 images" in overview.summary


def test_upload_single_many_zip_duplicates_and_bad_files(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "p")
    a = write_image(tmp_path / "a.png")
    b = write_image(tmp_path / "b.jpg", color=(1, 2, 3), fmt="JPEG")
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(image_bytes()[:40])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    archive = tmp_path / "more.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("c.png", image_bytes(color=(9, 9, 9)))
        zf.writestr("a-again.png", a.read_bytes())
        zf.writestr("readme.txt", "hi")
    report = upload_images(svc, state, [a, b, corrupt, text, archive])
    assert report.added == ["a.png", "b.jpg", "more.zip/c.png"]
    assert report.duplicates == ["more.zip/a-again.png"]
    assert {name for name, _ in report.rejected} == {"broken.png", "notes.png", "more.zip/readme.txt"}
    assert "duplicate" in report.message and "Rejected broken.png" in report.message
    overview = project_overview(svc, state)
    assert overview.counts["new"] == 3 and [r[2] for r in overview.rows] == ["new"] * 3
    with pytest.raises(UserError):
        upload_images(svc, state, [])


def test_upload_over_pixel_cap_is_rejected(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "p")
    big = write_image(tmp_path / "big.png", width=7000, height=6000)
    report = upload_images(svc, state, [big])
    assert report.added == [] and "MP" in report.rejected[0][1]


def test_class_set_validation(svc: Services) -> None:
    state = create_project(svc, "p")
    with pytest.raises(UserError, match="empty"):
        save_class_set(svc, state, [], "  , ,", [])
    with pytest.raises(LabelError, match="twice"):
        save_class_set(svc, state, [], "Cat, cat", [])
    with pytest.raises(UserError, match="no label space"):
        save_class_set(svc, state, ["nope"], "", [])
    many = ", ".join(f"class {i}" for i in range(200))
    assert len(save_class_set(svc, state, [], many, []).adhoc) == 200
    choice = save_class_set(svc, state, ["street"], "Straße, قطة, 猫", [])
    assert choice.adhoc == ("Straße", "قطة", "猫")
    assert current_class_set(svc, state) == choice
    labels = [o.label for o in class_options(svc, load_context(svc, state))]
    assert labels[:3] == ["person [street]", "car [street]", "road [street]"] and "قطة [adhoc]" in labels


def test_synonym_suggestions_are_confirmed_by_the_user(svc: Services) -> None:
    state = create_project(svc, "p")
    suggestions = suggest_synonyms(svc, ["street", "drive"], "")
    labels = [s.label for s in suggestions]
    assert any(label.startswith("person [street] ≈ pedestrian [drive] (") for label in labels)
    person = next(s for s in suggestions if s.a == "person")
    choice = save_class_set(svc, state, ["street", "drive"], "", [person])
    assert choice.synonyms == (("person", "pedestrian"),)
    assert suggest_synonyms(svc, ["street"], "") == []


def test_propose_without_class_set_or_model(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "p")
    report = upload_images(svc, state, [write_image(tmp_path / "a.png")])
    state = replace(state, image_id=report.first_image_id)
    with pytest.raises(UserError, match="class set"):
        propose(svc, state, "ann")
    save_class_set(svc, state, [], "cat", [])
    no_model = replace(svc, model=FakeModel(available=False))
    with pytest.raises(UserError, match="No model checkpoint"):
        propose(no_model, state, "ann")


def test_propose_shows_overlapping_segments_of_each_space(svc: Services, project: UserState) -> None:
    result = propose(svc, project, "ann")
    assert result.ok and result.view is not None
    view = result.view
    assert view.status == "proposed" and len(view.segments) == 4
    assert {s.label_space for s in view.segments} == {"street", "drive"}
    person = next(s for s in view.segments if s.class_name == "person")
    pedestrian = next(s for s in view.segments if s.class_name == "pedestrian")
    assert (person.mask & pedestrian.mask).any()  # overlaps across label spaces are kept
    assert result.state.version == view.version


def test_propose_on_an_unfamiliar_photo_says_so_first(svc: Services, project: UserState, monkeypatch) -> None:
    from dataclasses import replace as replace_prediction

    from resi_core.predictor import UNFAMILIAR_NOTICE
    from tests.app.conftest import FakePredictor

    real = FakePredictor.predict
    monkeypatch.setattr(FakePredictor, "predict", lambda self, *a, **k: replace_prediction(
        real(self, *a, **k), unfamiliar=True, notice=UNFAMILIAR_NOTICE))
    result = propose(svc, replace(project, min_score=0.2), "ann")
    assert result.ok and result.message.startswith("This photo looks unlike anything the model was trained on")
    assert len(result.view.segments) == 4  # stored: the user can still look at them
    assert visible_segments(result.view.segments, result.state) == []  # ... once the threshold goes down
    lowered = replace(result.state, min_score=0.0)
    assert len(visible_segments(result.view.segments, lowered)) == 4
    # The next image gets the user's own threshold back, not the flagged image's.
    assert on_image(result.state, None).min_score == 0.2


def test_a_background_proposal_the_model_flagged_opens_hidden(svc: Services, project: UserState) -> None:
    """`train prelabel` stores the familiarity flag with the proposal; the app opens such an image as the
    Propose button leaves it (hidden, said first), and only while it is as proposed."""
    from resi_core.predictor import UNFAMILIAR_NOTICE
    from storage import repo
    from storage.models import ImageStatus

    ctx = load_context(svc, project)
    version_id = model_version_id(svc, ctx, svc.model.info(ctx.checkpoint))
    first, second = project.image_id, project.image_id + 1
    mask = np.zeros((48, 64), dtype=bool)
    mask[5:20, 5:30] = True
    row = {"id": "s1", "class_name": "car", "label_space": "street", "isthing": True, "score": 0.9,
           "rle": encode_mask(mask)}
    with svc.sessions.begin() as session:
        repo.save_proposal(session, first, version_id, ctx.class_set.id, [row], 5.0, "model", unfamiliar=True)
        repo.save_proposal(session, second, version_id, ctx.class_set.id, [row], 5.0, "model", unfamiliar=False)
    mine = replace(project, min_score=0.3)
    state, view = open_image(svc, mine, first, "ann")
    assert view.notice == UNFAMILIAR_NOTICE and state.min_score == 1.0 and len(view.segments) == 1
    assert visible_segments(view.segments, state) == []  # hidden, not deleted
    assert state.users_min_score == 0.3
    # The next image (not flagged) opens with the user's own threshold and no notice.
    state, view = open_image(svc, state, second, "ann")
    assert view.notice == "" and state.min_score == 0.3 and len(visible_segments(view.segments, state)) == 1
    # Accepting the unflagged image moves to the flagged one, hidden and said in the message.
    accepted = accept(svc, state, "ann")
    assert accepted.next_image_id == first and accepted.state.min_score == 1.0
    assert accepted.message.endswith(UNFAMILIAR_NOTICE)
    # Once someone edited it, the flag no longer hides anything: they have seen the proposals.
    state, view = open_image(svc, mine, first, "ann")
    deleted = delete_segment(svc, state, "ann", "s1")
    assert deleted.view.status == ImageStatus.IN_REVIEW.value
    state, view = open_image(svc, mine, first, "ann")
    assert view.notice == "" and state.min_score == 0.3


def test_re_propose_with_other_class_set_is_one_undoable_edit(svc: Services, project: UserState) -> None:
    state = propose(svc, project, "ann").state
    save_class_set(svc, state, [], "cat, dog", [])
    result = propose(svc, state, "ann")
    assert sorted(s.class_name for s in result.view.segments) == ["cat", "dog"]
    undone = undo(svc, result.state, "ann")
    assert len(undone.view.segments) == 4


def test_corrections_relabel_delete_merge_brush_add_undo_redo(svc: Services, project: UserState) -> None:
    result = propose(svc, project, "ann")
    state, view = result.state, result.view
    shape = view.image.shape[:2]
    person = next(s for s in view.segments if s.class_name == "person")
    car = next(s for s in view.segments if s.class_name == "car")
    options = class_options(svc, load_context(svc, state))

    result = relabel(svc, state, "ann", person.id, find_option(options, "pedestrian [drive]"))
    assert next(s for s in result.view.segments if s.id == person.id).class_name == "pedestrian"

    result = edit_mask(svc, result.state, "ann", person.id, brush(shape, slice(40, 48), slice(0, 8)), BrushMode.ADD)
    grown = next(s for s in result.view.segments if s.id == person.id)
    assert grown.mask[40:48, 0:8].all() and grown.area == person.area + 64

    result = edit_mask(svc, result.state, "ann", person.id, brush(shape, slice(0, 4), slice(0, 64)), "erase from mask")
    assert not next(s for s in result.view.segments if s.id == person.id).mask[0:4].any()

    with pytest.raises(UserError, match="Paint"):
        edit_mask(svc, result.state, "ann", person.id, {"background": None, "layers": [], "composite": None}, "add to mask")

    result = merge_segments(svc, result.state, "ann", person.id, car.id)
    assert car.id not in {s.id for s in result.view.segments}
    merged = next(s for s in result.view.segments if s.id == person.id)
    assert merged.mask[car.mask].all()

    result = add_segment(svc, result.state, "ann", brush(shape, slice(10, 20), slice(10, 20)),
                           find_option(options, "road [street]"))
    road = next(s for s in result.view.segments if s.class_name == "road" and s.id == result.state.selected_id)
    assert road.area == 100 and not road.isthing

    result = delete_segment(svc, result.state, "ann", road.id)
    assert road.id not in {s.id for s in result.view.segments} and result.view.can_undo
    result = undo(svc, result.state, "ann")
    assert road.id in {s.id for s in result.view.segments} and result.view.can_redo
    result = redo(svc, result.state, "ann")
    assert road.id not in {s.id for s in result.view.segments}
    assert result.view.status == "in_review"


def test_two_tabs_editing_the_same_image_conflict_without_losing_work(svc: Services, project: UserState) -> None:
    result = propose(svc, project, "ann")
    tab_a = tab_b = result.state
    seg = result.view.segments[0]
    other = result.view.segments[1]
    options = class_options(svc, load_context(svc, tab_a))
    saved = relabel(svc, tab_a, "alice", seg.id, find_option(options, "car [street]"))
    assert saved.ok
    clash = delete_segment(svc, tab_b, "bob", other.id)
    assert not clash.ok and "changed by someone else" in clash.message
    assert clash.state.pending is not None
    refused = accept(svc, clash.state, "bob")  # accepting now would drop Bob's edit
    assert not refused.ok and "Save mine" in refused.message and refused.state.pending is not None
    # Alice's edit is saved; Bob's is kept and can be saved as a new revision.
    kept = save_pending_anyway(svc, clash.state, "bob")
    ids = {s.id for s in kept.view.segments}
    assert other.id not in ids and next(s for s in kept.view.segments if s.id == seg.id).class_name == "car"
    with pytest.raises(UserError):
        save_pending_anyway(svc, kept.state, "bob")


def test_accept_records_piq_and_opens_next_then_quality(svc: Services, project: UserState) -> None:
    result = propose(svc, project, "ann")
    state = result.state
    accepted = accept(svc, state, "ann")
    assert accepted.ok and accepted.piq == pytest.approx(1.0)
    assert accepted.next_image_id is not None and accepted.next_image_id != project.image_id
    nxt = propose(svc, accepted.state, "ann")
    victim = nxt.view.segments[0]
    edited = delete_segment(svc, nxt.state, "ann", victim.id)
    second = accept(svc, edited.state, "ann")
    assert second.piq is not None and second.piq < 1.0 and second.next_image_id is None
    report = quality(svc, state)
    assert len(report.over_time) == 2 and report.accepted_images == 2
    assert report.unchanged_share == pytest.approx(7 / 8)
    assert report.per_model[0]["images"] == 2 and "Mean PIQ" in report.summary
    # Accepted by mistake: open it again and undo; it is back in review and out of the quality report.
    reopened_state, _ = open_image(svc, state, edited.state.image_id)
    reopened = undo(svc, reopened_state, "ann")
    assert reopened.ok and reopened.view.status == "in_review" and "in review again" in reopened.message
    assert [s.id for s in reopened.view.segments] == [s.id for s in edited.view.segments]
    again = quality(svc, state)
    assert len(again.over_time) == 1 and again.accepted_images == 1
    assert accept(svc, reopened.state, "ann").ok and len(quality(svc, state).over_time) == 2
    # Proposing again on an accepted image says that it goes back to review.
    first, _ = open_image(svc, state, project.image_id)
    re_proposed = propose(svc, first, "ann")
    assert re_proposed.view.status == "in_review" and "back in review" in re_proposed.message


def test_no_project_or_image_gives_a_clear_message(svc: Services) -> None:
    with pytest.raises(UserError, match="project"):
        project_overview(svc, UserState())
    state = create_project(svc, "p")
    with pytest.raises(UserError, match="image"):
        propose(svc, state, "ann")


def test_domain_note_names_the_held_spaces_and_the_way_out() -> None:

    probs = {"street": 0.01, "portrait": 0.07, "drive": 0.91, "parts": 0.01}
    asked = ("street", "portrait")
    note = domain_note(probs, ("street",), 0.98, asked)
    # Named: the asked set that kept the normal threshold, not the likeliest domain overall (drive).
    assert "most like 'portrait' training data (p = 0.07)" in note and "proposals of 'street'" in note
    assert "0.98" in note and "without --domain-aware" in note and "drive" not in note
    assert domain_note(probs, (), 0.98, asked) == "" and domain_note({}, ("street",), 0.98, asked) == ""
    assert domain_note(probs, ("street",), None, asked) == ""
    # A fine-tuned space kept by the domain it inherited is named with that domain.
    note = domain_note(probs, ("street",), 0.98, ("street", "helmets"), {"helmets": "drive"})
    assert "most like 'drive' training data, the domain that 'helmets' inherited" in note and "0.91" in note


def test_a_damaged_zip_member_is_rejected_and_the_rest_kept(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "p")
    damaged = image_bytes(color=(5, 6, 7))
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("a.png", image_bytes(color=(1, 1, 1)))
        zf.writestr("b.png", damaged)
        zf.writestr("c.png", image_bytes(color=(2, 2, 2)))
    raw = bytearray(archive.read_bytes())
    at = raw.index(damaged) + len(damaged) // 2
    raw[at] ^= 0xFF  # the stored CRC no longer matches
    archive.write_bytes(bytes(raw))
    report = upload_images(svc, state, [archive])
    assert report.added == ["batch.zip/a.png", "batch.zip/c.png"]
    [(name, reason)] = report.rejected
    assert name == "batch.zip/b.png" and "damaged" in reason


def test_two_annotators_are_sent_to_different_images(svc: Services, tmp_path: Path) -> None:
    state = create_project(svc, "team")
    paths = [write_image(tmp_path / f"{i}.png", color=(i * 40, 9, 9)) for i in range(3)]
    upload_images(svc, state, paths)
    save_class_set(svc, state, ["street"], "", [])
    first, second, third = (int(r[0]) for r in project_overview(svc, state).rows)
    ann, _ = open_image(svc, state, first, "ann")
    bob, view = open_image(svc, state, second, "bob")
    assert view.other_labeler is None
    rows = {int(r[0]): r for r in project_overview(svc, state).rows}
    assert (rows[first][-1], rows[second][-1], rows[third][-1]) == ("ann", "bob", "")
    # Ann accepts (the image is empty: she is asked first): the next image in order is Bob's, so she goes
    # on to the third.
    asked = accept(svc, ann, "ann")
    assert not asked.ok and asked.asks_empty and "no segments" in asked.message
    done = accept(svc, ann, "ann", empty_ok=True)
    assert done.ok and done.next_image_id == third
    # Opening an image someone else holds works, and says who.
    _, peek = open_image(svc, state, second, "ann")
    assert peek.other_labeler == "bob" and project_overview(svc, state).rows[1][-1] == "bob"
    # Bob accepts too; the only open image is Ann's now.
    finished = accept(svc, bob, "bob", empty_ok=True)
    assert finished.next_image_id is None and "labeled by others" in finished.message
    with pytest.raises(UserError, match="not an image id"):
        open_image(svc, state, "latest", "ann")


def test_saving_a_class_set_over_a_newer_one_is_refused(svc: Services) -> None:
    state = create_project(svc, "p")
    assert current_class_set(svc, state) is None
    ann = save_class_set(svc, state, ["street"], "", [], based_on=None)  # Ann starts from no set
    # Bob loaded the project before Ann saved: his save would drop her set, so it is refused.
    with pytest.raises(UserError, match="Someone saved another class set.*label spaces: street"):
        save_class_set(svc, state, ["drive"], "hydrant", [], based_on=None)
    assert current_class_set(svc, state).label_spaces == ("street",)
    # Loading the current set first, then saving, works.
    bob = save_class_set(svc, state, ["street", "drive"], "", [], based_on=current_class_set(svc, state).id)
    assert bob.id != ann.id and current_class_set(svc, state).id == bob.id


def test_second_propose_on_a_just_proposed_image_is_a_conflict_not_a_silent_no_op(
        svc: Services, project: UserState) -> None:
    tab_a = tab_b = project  # both opened the new image at version 0
    first = propose(svc, tab_a, "alice")
    assert first.ok and first.view.version == 1
    second = propose(svc, tab_b, "bob")
    assert not second.ok and "changed by someone else" in second.message and second.state.pending is not None
    assert load_image(svc, tab_a)[1].version == 1  # nothing of Bob's was applied


def test_skip_opens_the_next_image_without_accepting(svc: Services, project: UserState) -> None:
    skipped = skip_image(svc, project, "ann")
    assert skipped.ok and skipped.state.image_id != project.image_id and "Skipped to b.png" in skipped.message
    assert project_overview(svc, project).counts["accepted"] == 0
    back = skip_image(svc, skipped.state, "ann")  # wraps round to the first image
    assert back.state.image_id == project.image_id
    # With the other image taken by Bob, there is nowhere to skip to.
    open_image(svc, project, skipped.state.image_id, "bob")
    stuck = skip_image(svc, back.state, "ann")
    assert not stuck.ok and stuck.state.image_id == project.image_id and "No other image" in stuck.message


def test_claim_time_is_a_setting(svc: Services, project: UserState) -> None:
    import time
    from dataclasses import replace

    other = next_open_image(svc, project.project_id, project.image_id)
    open_image(svc, project, other, "bob")
    open_image(svc, project, project.image_id, "ann")
    assert not skip_image(svc, project, "ann").ok  # Bob's claim (15 minutes by default) is live
    short = replace(svc, config=replace(svc.config, claim_minutes=0.001))  # 60 ms
    time.sleep(0.1)
    assert project_overview(short, project).rows[1][-1] == ""  # no one is labeling it now
    skipped = skip_image(short, project, "ann")
    assert skipped.ok and skipped.state.image_id == other


def test_delete_image_opens_the_next_and_refuses_a_stale_tab(svc: Services, project: UserState) -> None:
    stale = project
    edited = propose(svc, project, "bob")  # Bob changed the image after the stale tab loaded it
    with pytest.raises(InvalidInput, match="reload it"):
        delete_image(svc, stale, "ann")
    fresh, view = open_image(svc, project, project.image_id, "ann")
    with pytest.raises(UserError, match="Another image is open now"):  # the first click was for another image
        delete_image(svc, fresh, "ann", confirmed_image_id=fresh.image_id + 1)
    with pytest.raises(InvalidInput, match="ann is labeling image"):  # Bob may not delete Ann's image
        delete_image(svc, fresh, "bob")
    result = delete_image(svc, fresh, "ann", confirmed_image_id=fresh.image_id)
    assert result.ok and f"Deleted {view.name}" in result.message and edited.view.image_id != result.state.image_id
    overview = project_overview(svc, project)
    assert [r[1] for r in overview.rows] == ["b.png"] and result.view.name == "b.png"
    last = delete_image(svc, result.state, "ann")
    assert last.view is None and last.state.image_id is None and project_overview(svc, project).rows == []


def test_upload_racing_another_upload_of_the_same_image_ends_as_a_duplicate(svc: Services, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import IntegrityError

    from storage import repo

    state = create_project(svc, "p")
    a = write_image(tmp_path / "a.png")
    real = repo.add_image
    calls = []

    def racing(session, store, project_id, data, name):  # the other upload commits first
        calls.append(name)
        if len(calls) == 1:
            with svc.sessions.begin() as other:
                real(other, store, project_id, data, "theirs.png")
            raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: images.project_id, images.sha256"))
        return real(session, store, project_id, data, name)

    monkeypatch.setattr(repo, "add_image", racing)
    report = upload_images(svc, state, [a])
    assert report.duplicates == ["a.png"] and report.rejected == [] and len(calls) == 2
    assert [r[1] for r in project_overview(svc, state).rows] == ["theirs.png"]


def test_open_undo_and_delete_wait_for_another_writer(svc: Services, project: UserState) -> None:
    """Each of these reads, then writes, in one transaction; on SQLite they must take the lock first or
    fail with "database is locked" when someone else commits in between."""
    from storage import repo
    from tests.storage.helpers import another_writer_holding_the_lock

    def busy() -> object:
        return another_writer_holding_the_lock(svc.sessions, lambda s: repo.create_project(s, f"busy {time.time()}"))

    with busy():
        opened, view = open_image(svc, project, project.image_id, "ann")
    proposed = propose(svc, opened, "ann")
    edited = delete_segment(svc, proposed.state, "ann", proposed.view.segments[0].id)
    with busy():
        undone = undo(svc, edited.state, "ann")
    assert undone.ok and len(undone.view.segments) == len(proposed.view.segments)
    with busy():
        deleted = delete_image(svc, undone.state, "ann")
    assert deleted.ok and view.name in deleted.message
