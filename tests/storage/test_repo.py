"""Repository functions, on SQLite and PostgreSQL (the `sessions` fixture is parametrized)."""

from __future__ import annotations

import io

import pytest
from PIL import Image as PILImage
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.errors import Correction, InvalidInput, NotFound
from storage.files import FileStore, inspect_image
from storage.models import AnnotationEvent, EventType, ImageStatus
from tests.storage.helpers import png_bytes, segment

H, W = 48, 64


def _project_with_model(session: Session) -> tuple[int, int, int]:
    project = repo.create_project(session, "Streets")
    class_set = repo.set_class_set(session, project.id, ["street", "portrait"], ["hydrant"], [("person", "pedestrian")])
    model = repo.register_model_version(session, project.id, "v1", "/ckpt/v1.safetensors", "ab" * 32,
                                        [{"name": "street", "classes": [], "lsqe": {"queries": 100}}],
                                        {"datasets": ["street"]}, active=True)
    return project.id, class_set.id, model.id


def _proposed_image(session: Session, store: FileStore, seed: int = 0) -> tuple[int, int, int, int]:
    project_id, class_set_id, model_id = _project_with_model(session)
    image, _ = repo.add_image(session, store, project_id, png_bytes(W, H, seed), "a.png")
    segments = [segment("s1", H, W, (0, 0, 10, 10)), segment("s2", H, W, (20, 20, 40, 40), "car", score=0.7)]
    repo.save_proposal(session, image.id, model_id, class_set_id, segments, inference_ms=12.5)
    return project_id, image.id, model_id, class_set_id


def test_projects_and_class_sets(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        project_id, class_set_id, _ = _project_with_model(s)
    with sessions.begin() as s:
        assert [p.name for p in repo.list_projects(s)] == ["Streets"]
        assert repo.get_project_by_name(s, "Streets").id == project_id
        current = repo.current_class_set(s, project_id)
        assert current is not None and current.id == class_set_id
        assert current.label_spaces == ["street", "portrait"] and current.synonyms == [["person", "pedestrian"]]
        with pytest.raises(InvalidInput, match="exists already"):
            repo.create_project(s, " Streets ")
        with pytest.raises(NotFound):
            repo.get_project(s, 999)


@pytest.mark.parametrize(
    ("adhoc", "message"),
    [([""], "empty"), (["   "], "empty"), (["x" * 101], "longer than 100"), (["Cat", "cat "], "twice"),
     (["fire_hydrant", "Fire Hydrant"], "twice")],
)
def test_bad_class_names_are_clear_errors(sessions: sessionmaker[Session], adhoc: list[str], message: str) -> None:
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        repo.set_class_set(s, project.id, ["street"])
    with sessions.begin() as s:
        with pytest.raises(InvalidInput, match=message):
            repo.set_class_set(s, project.id, [], adhoc)
        with pytest.raises(InvalidInput, match="empty"):
            repo.set_class_set(s, project.id, [], [])
        assert repo.current_class_set(s, project.id).label_spaces == ["street"]  # nothing lost


def test_images_are_stored_once_by_hash(sessions: sessionmaker[Session], store: FileStore) -> None:
    data = png_bytes(W, H)
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        image, dup = repo.add_image(s, store, project.id, data, "one.png")
        again, dup2 = repo.add_image(s, store, project.id, data, "copy.png")
    assert (dup, dup2) == (False, True) and again.id == image.id
    assert (image.width, image.height, image.format, image.byte_size) == (W, H, "PNG", len(data))
    assert store.read(image.sha256) == data
    assert sum(1 for p in store.root.rglob("*") if p.is_file()) == 1


def test_exif_orientation_is_recorded_and_size_corrected(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        image, _ = repo.add_image(s, store, project.id, png_bytes(W, H, exif_orientation=6), "rot.jpg")
    assert (image.exif_orientation, image.width, image.height) == (6, H, W)


def _bomb() -> bytes:
    buf = io.BytesIO()
    PILImage.new("1", (8000, 6000)).save(buf, format="PNG")  # 48 MP of zeros: a few kB on disk
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"not an image at all", "not an image"), (png_bytes(W, H)[:200], "truncated"),
     (b"", "empty"), (None, "MP limit")],
)
def test_bad_images_are_rejected_and_nothing_is_lost(
    sessions: sessionmaker[Session], store: FileStore, data: bytes | None, message: str
) -> None:
    data = _bomb() if data is None else data
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        good, _ = repo.add_image(s, store, project.id, png_bytes(W, H), "good.png")
    with sessions() as s:
        with pytest.raises(InvalidInput, match=message):
            repo.add_image(s, store, project.id, data, "bad.png")
        s.rollback()
    with sessions() as s:
        assert [i.id for i in repo.list_images(s, project.id)] == [good.id]
    with pytest.raises(InvalidInput):
        inspect_image(data)


def test_proposal_seeds_the_annotation(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project_id, image_id, model_id, _ = _proposed_image(s, store)
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        assert ann.status == ImageStatus.PROPOSED and ann.version == 1
        assert [seg.id for seg in ann.segments] == ["s1", "s2"]
        assert ann.segments[1].rle["size"] == [H, W] and isinstance(ann.segments[1].rle["counts"], str)
        proposal = repo.latest_proposal(s, image_id)
        assert proposal is not None and proposal.inference_ms == 12.5 and proposal.model_version_id == model_id
        assert [seg.class_name for seg in repo.proposal_segments(proposal)] == ["person", "car"]
        assert repo.active_model_version(s, project_id).id == model_id


def test_corrections_undo_redo_accept(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project_id, image_id, model_id, _ = _proposed_image(s, store)
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        s1, s2 = (seg.to_json() for seg in ann.segments)
        v = repo.apply_correction(s, image_id, ann.version, "ann", Correction("relabel", [s1], [{**s1, "class_name": "pedestrian"}]))
        v = repo.apply_correction(s, image_id, v, "ann", Correction("add", [], [segment("s3", H, W, (30, 0, 48, 20), "road", isthing=False, score=None)]))
        v = repo.apply_correction(s, image_id, v, "ann", Correction("delete", [s2], []))
        assert v == 4
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        assert ann.status == ImageStatus.IN_REVIEW
        assert sorted((x.id, x.class_name) for x in ann.segments) == [("s1", "pedestrian"), ("s3", "road")]
        v = repo.undo(s, image_id, ann.version, "ann")  # brings s2 back
        v = repo.undo(s, image_id, v, "ann")  # removes s3
        assert sorted(x.id for x in repo.current_annotation(s, image_id).segments) == ["s1", "s2"]
        v = repo.redo(s, image_id, v, "ann")
        assert repo.can_undo_redo(s, image_id) == (True, True)
        assert sorted(x.id for x in repo.current_annotation(s, image_id).segments) == ["s1", "s2", "s3"]
        v = repo.apply_correction(s, image_id, v, "ann", Correction("erase", [s2], [segment("s2", H, W, (20, 20, 30, 30), "car")]))
        assert repo.can_undo_redo(s, image_id) == (True, False)  # a new edit clears redo
        with pytest.raises(InvalidInput, match="nothing to redo"):
            repo.redo(s, image_id, v, "ann")
        v = repo.accept(s, image_id, v, "ann", piq=0.75, model_version_id=model_id)
    with sessions.begin() as s:
        types = [e.event_type for e in repo.history(s, image_id)]
        assert types == [EventType.PROPOSE, EventType.RELABEL, EventType.ADD, EventType.DELETE, EventType.UNDO,
                         EventType.UNDO, EventType.REDO, EventType.ERASE, EventType.ACCEPT]
        assert repo.status_counts(s, project_id)[ImageStatus.ACCEPTED] == 1
        [accepted] = repo.accepted_annotations(s, project_id)
        assert accepted.image_id == image_id and sorted(x.id for x in accepted.segments) == ["s1", "s2", "s3"]
        [record] = repo.piq_history(s, project_id)
        assert (record.piq, record.image_id, record.model_version_id) == (0.75, image_id, model_id)
        repo.record_piq(s, project_id, 0.8, model_version_id=model_id, n_images=10)
        assert [r.piq for r in repo.piq_history(s, project_id, model_id)] == [0.75, 0.8]


def test_merge_event_keeps_masks_before_and_after(sessions: sessionmaker[Session], store: FileStore) -> None:
    import json

    with sessions.begin() as s:
        _, image_id, _, _ = _proposed_image(s, store)
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        merged = segment("m", H, W, (0, 0, 40, 40))
        repo.apply_correction(s, image_id, ann.version, "bob", Correction("merge", [x.to_json() for x in ann.segments], [merged]))
        event = repo.history(s, image_id)[-1]
        assert event.user == "bob" and event.event_type == EventType.MERGE
        assert [x["id"] for x in json.loads(event.before)] == ["s1", "s2"]
        assert [x["id"] for x in json.loads(event.after)] == ["m"]


@pytest.mark.parametrize(
    ("correction", "message"),
    [
        (Correction("add", [], [segment("x", H + 1, W, (0, 0, 5, 5))]), "mask is"),
        (Correction("add", [], [segment("x", H, W, (0, 0, 5, 5), class_name=" ")]), "empty"),
        (Correction("delete", [{"id": "nope"}], []), "not in the image"),
        (Correction("add", [], [segment("s1", H, W, (0, 0, 5, 5))]), "reuses the id"),
        (Correction("teleport", [], []), "Unknown correction type"),
        (Correction("accept", [], []), "not a correction"),
    ],
)
def test_bad_corrections_are_rejected_and_nothing_is_lost(
    sessions: sessionmaker[Session], store: FileStore, correction: Correction, message: str
) -> None:
    with sessions.begin() as s:
        _, image_id, _, _ = _proposed_image(s, store)
    with sessions() as s, s.begin():
        with pytest.raises(InvalidInput, match=message):
            repo.apply_correction(s, image_id, 1, "ann", correction)
        # the savepoint rolled back: the transaction is still usable and unchanged
        ann = repo.current_annotation(s, image_id)
        assert ann.version == 1 and [x.id for x in ann.segments] == ["s1", "s2"]
    with sessions() as s:
        assert repo.current_annotation(s, image_id).version == 1
        with pytest.raises(NotFound):
            repo.current_annotation(s, 12345)
        with pytest.raises(NotFound):
            repo.apply_correction(s, 12345, 1, "ann", Correction("add", [], []))
        with pytest.raises(NotFound):
            repo.list_images(s, 999)


def test_listing_pages_and_status_filter(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project_id, class_set_id, model_id = _project_with_model(s)
        ids = [repo.add_image(s, store, project_id, png_bytes(8, 8, seed), f"{seed}.png")[0].id for seed in range(7)]
        repo.save_proposal(s, ids[3], model_id, class_set_id, [], 1.0)
    with sessions.begin() as s:
        pages = [[i.id for i in repo.list_images(s, project_id, page=p, page_size=3)] for p in (1, 2, 3, 4)]
        assert pages == [ids[:3], ids[3:6], ids[6:], []]
        assert [i.id for i in repo.list_images(s, project_id, status="proposed")] == [ids[3]]
        counts = repo.status_counts(s, project_id)
        assert counts[ImageStatus.NEW] == 6 and counts[ImageStatus.PROPOSED] == 1
        with pytest.raises(InvalidInput):
            repo.list_images(s, project_id, status="done")


def test_one_active_model_version(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        project_id, _, v1 = _project_with_model(s)
        v2 = repo.register_model_version(s, project_id, "v2", "/ckpt/v2", "cd" * 32, [], {"from": "accepted"},
                                         parent_id=v1, active=True)
        assert repo.active_model_version(s, project_id).id == v2.id and v2.parent_id == v1
        repo.set_active_model(s, v1)
        assert repo.active_model_version(s, project_id).id == v1
        assert [m.name for m in repo.list_model_versions(s, project_id)] == ["v1", "v2"]
        with pytest.raises(InvalidInput, match="already"):
            repo.register_model_version(s, project_id, "v2", "/x", "0" * 64, [])


def test_accept_is_undoable_and_counts_once_in_quality(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project_id, image_id, model_id, _ = _proposed_image(s, store)
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        before = sorted((x.id, x.class_name) for x in ann.segments)
        v = repo.accept(s, image_id, ann.version, "ann", piq=0.5, model_version_id=model_id)
        assert repo.can_undo_redo(s, image_id) == (True, False)
        v = repo.undo(s, image_id, v, "ann")  # reopens the image as it was (proposed), masks untouched
        ann = repo.current_annotation(s, image_id)
        assert ann.status == ImageStatus.PROPOSED and sorted((x.id, x.class_name) for x in ann.segments) == before
        assert repo.accepted_annotations(s, project_id) == [] and repo.accepted_image_piq(s, project_id) == []
        v = repo.redo(s, image_id, v, "ann")
        assert repo.current_annotation(s, image_id).status == ImageStatus.ACCEPTED
        [record] = repo.accepted_image_piq(s, project_id)
        assert record.piq == 0.5
        # Reopened, corrected and accepted again: the image counts once, with its latest PIQ.
        v = repo.undo(s, image_id, v, "ann")
        s1 = ann.segments[0].to_json()
        v = repo.apply_correction(s, image_id, v, "ann", Correction("delete", [s1], []))
        repo.accept(s, image_id, v, "ann", piq=0.25, model_version_id=model_id)
        assert [r.piq for r in repo.accepted_image_piq(s, project_id)] == [0.25]
        assert [r.piq for r in repo.piq_history(s, project_id)] == [0.5, 0.25]  # the history keeps both
        types = [e.event_type for e in repo.history(s, image_id)]
        assert types[1:] == [EventType.ACCEPT, EventType.UNDO, EventType.REDO, EventType.UNDO, EventType.DELETE,
                             EventType.ACCEPT]


def test_claims_lapse_and_do_not_touch_the_version(sessions: sessionmaker[Session], store: FileStore) -> None:
    from datetime import timedelta

    from storage.models import utcnow

    with sessions.begin() as s:
        project_id, image_id, _, _ = _proposed_image(s, store)
        version = repo.current_annotation(s, image_id).version
        assert repo.claim_image(s, image_id, "ann") is None
        assert repo.claim_image(s, image_id, "bob") == "ann"  # Ann's claim is live: Bob does not take it
        assert repo.active_claims(s, project_id) == {image_id: "ann"}
        assert repo.current_annotation(s, image_id).version == version
        later = utcnow() + timedelta(seconds=repo.CLAIM_SECONDS + 1)
        assert repo.active_claims(s, project_id, later) == {}
        # A shorter claim time (the app's --claim-minutes) lapses sooner; a non-positive one is refused.
        soon = utcnow() + timedelta(seconds=61)
        assert repo.active_claims(s, project_id, soon) == {image_id: "ann"}
        assert repo.active_claims(s, project_id, soon, claim_seconds=60) == {}
        with pytest.raises(InvalidInput, match="positive time"):
            repo.active_claims(s, project_id, claim_seconds=0)
        # An edit renews the editor's claim.
        ann = repo.current_annotation(s, image_id)
        repo.apply_correction(s, image_id, ann.version, "bob", Correction("delete", [ann.segments[0].to_json()], []))
        assert repo.active_claims(s, project_id) == {image_id: "bob"}


def test_delete_image_removes_its_rows_and_refuses_a_stale_version(sessions: sessionmaker[Session],
                                                                   store: FileStore) -> None:
    from sqlalchemy import func, select

    from storage.models import AnnotationEvent, AnnotationSegment, PiqRecord
    from storage.models import Image as ImageRow
    from storage.models import Proposal as ProposalRow

    with sessions.begin() as s:
        project_id, image_id, model_id, _ = _proposed_image(s, store)
        keep, _ = repo.add_image(s, store, project_id, png_bytes(W, H, 99), "keep.png")
        v = repo.current_annotation(s, image_id).version
        v = repo.accept(s, image_id, v, "ann", piq=0.5, model_version_id=model_id)
    with sessions.begin() as s, pytest.raises(InvalidInput, match="reload it"):
        repo.delete_image(s, image_id, v - 1)
    with sessions.begin() as s:
        repo.delete_image(s, image_id, v)
    with sessions() as s:
        for table in (AnnotationSegment, AnnotationEvent, ProposalRow, PiqRecord):
            assert s.scalar(select(func.count()).select_from(table).where(table.image_id == image_id)) == 0
        assert repo.image_ids(s, project_id) == [keep.id]
        assert s.get(ImageRow, image_id) is None
        with pytest.raises(NotFound):
            repo.delete_image(s, image_id, v)


def test_undo_restores_the_status_the_event_replaced(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        _, image_id, _, _ = _proposed_image(s, store)
    with sessions.begin() as s:
        ann = repo.current_annotation(s, image_id)
        s1 = next(x for x in ann.segments if x.id == "s1").to_json()
        v = repo.accept(s, image_id, ann.version, "ann")
        # An edit of an accepted image reopens it for review; undoing the edit accepts it again.
        v = repo.apply_correction(s, image_id, v, "ann", Correction("delete", [s1], []))
        assert repo.current_annotation(s, image_id).status == ImageStatus.IN_REVIEW
        v = repo.undo(s, image_id, v, "ann")
        ann = repo.current_annotation(s, image_id)
        assert ann.status == ImageStatus.ACCEPTED and {x.id for x in ann.segments} == {"s1", "s2"}
        v = repo.redo(s, image_id, v, "ann")  # the edit again: in review
        assert repo.current_annotation(s, image_id).status == ImageStatus.IN_REVIEW
        v = repo.undo(s, image_id, v, "ann")
        v = repo.undo(s, image_id, v, "ann")  # then the acceptance: back to proposed
        assert repo.current_annotation(s, image_id).status == ImageStatus.PROPOSED
        assert repo.can_undo_redo(s, image_id) == (False, True)
        # Events saved before migration 0004 have no status_before: undoing one reopens for review.
        v = repo.redo(s, image_id, v, "ann")
        s.execute(update(AnnotationEvent).where(AnnotationEvent.image_id == image_id).values(status_before=None))
        repo.undo(s, image_id, v, "ann")
        assert repo.current_annotation(s, image_id).status == ImageStatus.IN_REVIEW


def test_undo_of_a_first_manual_edit_leaves_the_image_new(sessions: sessionmaker[Session], store: FileStore) -> None:
    with sessions.begin() as s:
        project_id, _, _ = _project_with_model(s)
        image, _ = repo.add_image(s, store, project_id, png_bytes(W, H, 3), "b.png")
        v = repo.apply_correction(s, image.id, image.version, "ann",
                                  Correction("add", [], [segment("n1", H, W, (0, 0, 5, 5))]))
        assert repo.current_annotation(s, image.id).status == ImageStatus.IN_REVIEW
        repo.undo(s, image.id, v, "ann")
        ann = repo.current_annotation(s, image.id)
        assert ann.status == ImageStatus.NEW and ann.segments == []
        assert repo.status_counts(s, project_id)[ImageStatus.NEW] == 1


def test_undo_stack_follows_targets_in_a_history_from_before_accept_was_undoable(
        sessions: sessionmaker[Session], store: FileStore) -> None:
    """Old code: edit E1, accept A, undo U that undid E1 (acceptances were skipped). The stack must
    read U as undoing E1, so Undo now reopens A and Redo re-applies E1 (not an empty 'accept')."""
    from storage.models import AnnotationEvent

    with sessions.begin() as s:
        _, image_id, _, _ = _proposed_image(s, store)
        ann = repo.current_annotation(s, image_id)
        s1 = ann.segments[0].to_json()
        v = repo.apply_correction(s, image_id, ann.version, "ann", Correction("delete", [s1], []))
        v = repo.accept(s, image_id, v, "ann")
        edit = [e for e in repo.history(s, image_id) if e.event_type == EventType.DELETE][0]
        # What the old code wrote for Undo: the edit's masks reverted, the image in review, U -> E1.
        v = repo._apply(s, image_id, v, "ann", EventType.UNDO, [], [s1], ImageStatus.IN_REVIEW,
                        target_event_id=edit.id)
        assert s.get(AnnotationEvent, repo.history(s, image_id)[-1].id).target_event_id == edit.id
        assert sorted(x.id for x in repo.current_annotation(s, image_id).segments) == ["s1", "s2"]
        v = repo.redo(s, image_id, v, "ann")  # re-applies the delete
        assert sorted(x.id for x in repo.current_annotation(s, image_id).segments) == ["s2"]
        v = repo.undo(s, image_id, v, "ann")  # undoes the delete again
        v = repo.undo(s, image_id, v, "ann")  # then the acceptance: nothing left to break
        assert sorted(x.id for x in repo.current_annotation(s, image_id).segments) == ["s1", "s2"]
        assert repo.can_undo_redo(s, image_id) == (False, True)


def test_undo_and_redo_buttons_follow_any_history(sessions: sessionmaker[Session], store: FileStore) -> None:
    """can_undo_redo answers from the latest event after a save and walks the history otherwise; either
    way it agrees with undo/redo stacks kept here, over a random mix of edits, undos, redos and accepts."""
    import random

    rng = random.Random(3)
    with sessions.begin() as s:
        _, image_id, _, _ = _proposed_image(s, store)
    done: list[str] = []  # what the buttons must offer: edits not undone, and undone ones to redo
    undone: list[str] = []
    with sessions.begin() as s:
        version = repo.current_annotation(s, image_id).version
        assert repo.can_undo_redo(s, image_id) == (False, False)  # a proposal is not undoable
        for step in range(60):
            action = rng.choice(["edit", "edit", "undo", "undo", "redo", "accept"])
            if action == "undo" and done:
                version = repo.undo(s, image_id, version, "ann")
                undone.append(done.pop())
            elif action == "redo" and undone:
                version = repo.redo(s, image_id, version, "ann")
                done.append(undone.pop())
            elif action == "accept":
                version = repo.accept(s, image_id, version, "ann")
                done.append(f"accept{step}")
                undone.clear()
            else:
                new = segment(f"n{step}", H, W, (0, 0, 8, 8), "road", isthing=False, score=None)
                version = repo.apply_correction(s, image_id, version, "ann", Correction("add", [], [new]))
                done.append(f"add{step}")
                undone.clear()
            assert repo.can_undo_redo(s, image_id) == (bool(done), bool(undone)), (step, action)
