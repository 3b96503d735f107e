"""Optimistic locking: two annotators saving the same image never silently overwrite each other."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.db import make_engine, make_session_factory, upgrade
from storage.errors import Conflict, Correction
from storage.files import FileStore
from tests.storage.helpers import another_writer_holding_the_lock, png_bytes, segment

H, W = 48, 64


def _setup(sessions: sessionmaker[Session], store: FileStore) -> int:
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        image, _ = repo.add_image(s, store, project.id, png_bytes(W, H), "a.png")
        repo.save_proposal(s, image.id, model.id, class_set.id,
                           [segment("s1", H, W, (0, 0, 10, 10)), segment("s2", H, W, (20, 20, 40, 40), "car")], 5.0)
        return image.id


def _relabel(seg, name: str) -> Correction:
    data = seg.to_json()
    return Correction("relabel", [data], [{**data, "class_name": name}])


def test_second_save_conflicts_and_can_be_reapplied(sessions: sessionmaker[Session], store: FileStore) -> None:
    image_id = _setup(sessions, store)
    with sessions() as s:
        seen_by_alice = repo.current_annotation(s, image_id)
    with sessions() as s:
        seen_by_bob = repo.current_annotation(s, image_id)
    with sessions.begin() as s:
        repo.apply_correction(s, image_id, seen_by_alice.version, "alice", _relabel(seen_by_alice.segments[0], "rider"))
    bob_edit = _relabel(seen_by_bob.segments[1], "truck")
    with sessions.begin() as s, pytest.raises(Conflict, match="changed by someone else") as info:
        repo.apply_correction(s, image_id, seen_by_bob.version, "bob", bob_edit)
    assert info.value.correction == bob_edit and (info.value.expected_version, info.value.current_version) == (1, 2)
    with sessions.begin() as s:  # Bob's edit touches another segment: it merges cleanly
        assert repo.reapply_correction(s, image_id, info.value.correction, "bob") == 3
    with sessions() as s:
        names = {x.id: x.class_name for x in repo.current_annotation(s, image_id).segments}
    assert names == {"s1": "rider", "s2": "truck"}


def test_conflict_on_the_same_segment_is_saved_as_a_new_revision(sessions: sessionmaker[Session], store: FileStore) -> None:
    image_id = _setup(sessions, store)
    with sessions() as s:
        seen = repo.current_annotation(s, image_id)
    with sessions.begin() as s:
        repo.apply_correction(s, image_id, seen.version, "alice", _relabel(seen.segments[0], "rider"))
    with sessions.begin() as s, pytest.raises(Conflict) as info:
        repo.apply_correction(s, image_id, seen.version, "bob", _relabel(seen.segments[0], "child"))
    with sessions.begin() as s, pytest.raises(Conflict):
        repo.reapply_correction(s, image_id, info.value.correction, "bob")
    with sessions.begin() as s:
        repo.reapply_correction(s, image_id, info.value.correction, "bob", force=True)
    with sessions() as s:
        assert {x.id: x.class_name for x in repo.current_annotation(s, image_id).segments}["s1"] == "child"
        events = repo.history(s, image_id)
        assert [(e.user, e.seq) for e in events[-2:]] == [("alice", 2), ("bob", 3)]
        assert '"rider"' in events[-1].before  # Alice's label is in the history, not lost


def test_simultaneous_saves_one_wins_one_conflicts(sessions: sessionmaker[Session], store: FileStore) -> None:
    image_id = _setup(sessions, store)
    with sessions() as s:
        seen = repo.current_annotation(s, image_id)
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def save(user: str, name: str) -> None:
        barrier.wait()
        try:
            with sessions.begin() as s:
                outcomes[user] = repo.apply_correction(s, image_id, seen.version, user, _relabel(seen.segments[0], name))
        except Conflict as exc:
            outcomes[user] = exc

    threads = [threading.Thread(target=save, args=(u, n)) for u, n in (("alice", "rider"), ("bob", "child"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(type(v).__name__ for v in outcomes.values()) == ["Conflict", "int"]
    with sessions() as s:
        assert repo.current_annotation(s, image_id).version == 2
        assert len(repo.history(s, image_id)) == 2


def _file_db(tmp_path: Path) -> tuple[Engine, sessionmaker[Session], FileStore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'resi.db'}")
    upgrade(engine)
    return engine, make_session_factory(engine), FileStore(tmp_path / "images")


def test_upload_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    """SQLite in WAL mode: a transaction that reads, then writes after another writer committed, fails
    with "database is locked" at once. add_image takes the write lock first, so it just waits."""
    engine, sessions, store = _file_db(tmp_path)
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
    theirs = lambda s: repo.add_image(s, store, project_id, png_bytes(8, 8, seed=1), "theirs.png")  # noqa: E731
    with another_writer_holding_the_lock(sessions, theirs), sessions.begin() as s:
        _, duplicate = repo.add_image(s, store, project_id, png_bytes(8, 8, seed=2), "ours.png")
    assert not duplicate
    with sessions() as s:
        assert sorted(i.original_name for i in repo.list_images(s, project_id)) == ["ours.png", "theirs.png"]
    engine.dispose()


def test_undo_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    engine, sessions, store = _file_db(tmp_path)
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        image, _ = repo.add_image(s, store, project_id, png_bytes(8, 8, seed=1), "a.png")
        version = repo.apply_correction(s, image.id, 0, "ann", Correction("add", [], [segment("x", 8, 8, (0, 0, 4, 4))]))
    with another_writer_holding_the_lock(sessions, lambda s: repo.create_project(s, "other")), \
            sessions.begin() as s:
        assert repo.undo(s, image.id, version, "ann") == version + 1
    engine.dispose()
