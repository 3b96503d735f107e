"""Every write path, while another connection holds the database's write lock for a second.

On SQLite another writer holds the lock with BEGIN IMMEDIATE, writes a row and commits a second later;
on PostgreSQL it holds EXCLUSIVE locks on the tables (reads go on, writes wait). Every write path of
the storage layer and of the command line starts while the lock is held: each must wait and succeed.
None may fail with "database is locked", which is what a transaction that reads, then writes, gets on
SQLite when another writer commits in between (the control test shows the hold provokes exactly that).
A wait longer than the timeout is `Busy` ("try again"), never a driver error.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from storage import cli, repo
from storage.db import Sessions, make_engine, make_session_factory, upgrade
from storage.errors import Busy, Correction
from storage.files import FileStore
from storage.models import JobStatus
from tests.storage.helpers import HOLD_S, lock_held, png_bytes, segment

H, W = 12, 16


def _prepare(sessions: Sessions, store: FileStore) -> dict[str, Any]:
    """One project with what each write path needs, each path on its own image or job."""
    with sessions.begin() as s:
        project = repo.create_project(s, "p")
        class_set = repo.set_class_set(s, project.id, ["street"])
        model = repo.register_model_version(s, project.id, "v1", "/c", "0" * 64, [])
        other_model = repo.register_model_version(s, project.id, "v2", "/d", "1" * 64, [])
        images = {}
        for i, name in enumerate(("propose", "correct", "reapply", "undo", "redo", "accept", "delete", "claim")):
            images[name] = repo.add_image(s, store, project.id, png_bytes(W, H, seed=i), f"{name}.png")[0].id
        for name in ("correct", "reapply", "undo", "redo", "accept"):
            repo.save_proposal(s, images[name], model.id, class_set.id, [segment("a", H, W, (0, 0, 4, 4))], 1.0)
        repo.apply_correction(s, images["undo"], 1, "ann", Correction("add", [], [segment("u", H, W, (5, 5, 9, 9))]))
        repo.apply_correction(s, images["redo"], 1, "ann", Correction("add", [], [segment("r", H, W, (5, 5, 9, 9))]))
        repo.undo(s, images["redo"], 2, "ann")
        jobs = [repo.create_job(s, project.id, "finetune", {"space": f"s{i}"}).id for i in range(3)]
        repo.update_job(s, jobs[1], status=JobStatus.RUNNING)
        return {"project": project.id, "class_set": class_set.id, "model": model.id, "other_model": other_model.id,
                "images": images, "jobs": jobs}


def _write_paths(store: FileStore, ids: dict[str, Any]) -> dict[str, Callable[[Session], object]]:
    """Every function of storage/repo.py that writes, as the app and the CLI call them."""
    p, img = ids["project"], ids["images"]
    seg = segment("n", H, W, (6, 6, 10, 10))
    # reapply: the rejected edit relabels "a", and someone else added a segment meanwhile (it merges)
    relabel = Correction("relabel", [segment("a", H, W, (0, 0, 4, 4))],
                         [segment("a", H, W, (0, 0, 4, 4), class_name="car")])
    return {
        "create_project": lambda s: repo.create_project(s, "new project"),
        "set_class_set": lambda s: repo.set_class_set(s, p, ["street"], ["hydrant"]),
        "add_image": lambda s: repo.add_image(s, store, p, png_bytes(W, H, seed=99), "upload.png"),
        "register_model_version": lambda s: repo.register_model_version(s, p, "v3", "/e", "2" * 64, []),
        "ensure_model_version (first Propose)": lambda s: repo.ensure_model_version(
            s, p, "v4", "/f", "3" * 64, []),
        "set_active_model": lambda s: repo.set_active_model(s, ids["other_model"]),
        "save_proposal": lambda s: repo.save_proposal(s, img["propose"], ids["model"], ids["class_set"],
                                                      [seg], 2.0),
        "apply_correction": lambda s: repo.apply_correction(s, img["correct"], 1, "ann",
                                                            Correction("add", [], [seg])),
        "reapply_correction": lambda s: (repo.apply_correction(s, img["reapply"], 1, "other",
                                                               Correction("add", [], [seg])),
                                         repo.reapply_correction(s, img["reapply"], relabel, "ann")),
        "undo": lambda s: repo.undo(s, img["undo"], 2, "ann"),
        "redo": lambda s: repo.redo(s, img["redo"], 3, "ann"),
        "accept (with PIQ)": lambda s: repo.accept(s, img["accept"], 1, "ann", piq=0.5, model_version_id=ids["model"]),
        "record_piq": lambda s: repo.record_piq(s, p, 0.7, n_images=3),
        "delete_image": lambda s: repo.delete_image(s, img["delete"], 0, "ann"),
        "claim_image": lambda s: repo.claim_image(s, img["claim"], "ann"),
        "create_job": lambda s: repo.create_job(s, p, "finetune", {"space": "new"}, unique_by="space"),
        "update_job (start)": lambda s: repo.update_job(s, ids["jobs"][0], status=JobStatus.RUNNING, pid=1),
        "update_job (progress)": lambda s: repo.update_job(s, ids["jobs"][1], progress=0.5, message="half"),
        "update_job (cancel)": lambda s: repo.update_job(s, ids["jobs"][2], status=JobStatus.FAILED,
                                                         message="Cancelled by the user."),
    }


def _run_all_while_locked(url: str, jobs: dict[str, Callable[[], object]]) -> dict[str, tuple[float, object]]:
    """Start every job while the lock is held; (finish time, result or exception) per job."""
    def timed(job: Callable[[], object]) -> tuple[float, object]:
        try:
            result: object = job()
        except Exception as exc:  # noqa: BLE001 - reported per path below
            result = exc
        return time.monotonic(), result

    with lock_held(url) as times, ThreadPoolExecutor(len(jobs)) as pool:
        futures = {name: pool.submit(timed, job) for name, job in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    released = times["released"]
    failed = {name: f"{type(r).__name__}: {r}" for name, (_, r) in done.items() if isinstance(r, BaseException)}
    assert not failed, failed
    early = [name for name, (finished, _) in done.items() if finished < released]
    assert not early, f"these did not wait for the lock (the test would not test them): {early}"
    return done


def test_every_storage_write_path_waits_for_the_lock(db_url: str, store: FileStore) -> None:
    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    ids = _prepare(sessions, store)
    paths = _write_paths(store, ids)

    def in_transaction(write: Callable[[Session], object]) -> Callable[[], object]:
        def run() -> object:
            with sessions.begin() as s:
                # What the app does: a write transaction often reads before it calls the repo.
                repo.list_projects(s)
                return write(s)
        return run

    _run_all_while_locked(db_url, {name: in_transaction(write) for name, write in paths.items()})
    with sessions() as s:
        assert repo.get_project_by_name(s, "new project")
        assert [v.name for v in repo.list_model_versions(s, ids["project"]) if v.is_active] == ["v2"]
        assert repo.current_annotation(s, ids["images"]["accept"]).status.value == "accepted"
        assert repo.current_annotation(s, ids["images"]["reapply"]).version == 3
        assert {j.id: j.status.value for j in repo.list_jobs(s, ids["project"])} == {
            ids["jobs"][0]: "running", ids["jobs"][1]: "running", ids["jobs"][2]: "failed",
            max(ids["jobs"]) + 1: "queued"}
    engine.dispose()


def test_the_hold_makes_read_then_write_fail_without_the_lock_first(tmp_path: Path) -> None:
    """Control: the same hold against a transaction that reads first (a plain session) and writes after the
    other writer committed. SQLite cannot upgrade that stale snapshot: it fails, as a `Busy`, not a driver error."""
    url = f"sqlite:///{tmp_path / 'resi.db'}"
    engine = make_engine(url)
    upgrade(engine)
    sessions = make_session_factory(engine)
    with lock_held(url), pytest.raises(Busy, match="Try again"), sessions() as s:
        repo.list_projects(s)
        time.sleep(HOLD_S * 1.5)  # the other writer commits meanwhile
        repo.create_project(s, "late")
        s.commit()
    engine.dispose()


def test_a_wait_past_the_timeout_is_busy_not_a_driver_error(db_url: str, store: FileStore) -> None:
    engine = make_engine(db_url, busy_timeout_ms=200)
    sessions = make_session_factory(engine)
    ids = _prepare(sessions, store)
    with lock_held(db_url), pytest.raises(Busy, match="nothing was saved. Try again"), sessions.begin() as s:
        repo.apply_correction(s, ids["images"]["correct"], 1, "ann", Correction("add", [], [segment("n", H, W, (6, 6, 9, 9))]))
    with sessions() as s:
        assert repo.current_annotation(s, ids["images"]["correct"]).version == 1  # nothing was saved
    engine.dispose()


def test_command_line_write_paths_wait_for_the_lock(db_url: str, tmp_path: Path, store: FileStore) -> None:
    """`python -m train finetune --register --activate` and a job's reports to its row (train/)."""
    from train.finetune import register
    from train.jobs import JobReporter

    engine = make_engine(db_url)
    sessions = make_session_factory(engine)
    ids = _prepare(sessions, store)
    base, out = tmp_path / "base", tmp_path / "out"
    for folder, content in ((base, b"base"), (out, b"tuned")):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(content)
    model = type("Model", (), {"label_spaces": {}})()
    cli_engines = [make_engine(db_url) for _ in range(4)]  # each command is its own process, with its own engine
    reporters = [JobReporter(make_session_factory(e), job_id, ids["project"])
                 for e, job_id in zip(cli_engines, ids["jobs"], strict=False)]
    _run_all_while_locked(db_url, {
        "finetune --register --activate": lambda: register(
            make_session_factory(cli_engines[3]), ids["project"], base,
            {"label_spaces": [], "text_encoder": "minilm"}, out, model, {"how": "test"}, activate=True),
        "job start": lambda: reporters[0].start("loading"),
        "job progress, then done": lambda: (reporters[1].progress(0.5, "half"), reporters[1].done("ok", {"a": 1})),
        "job failed": lambda: reporters[2].failed("it broke"),
    })
    with sessions() as s:
        versions = {v.checkpoint_path: v for v in repo.list_model_versions(s, ids["project"])}
        tuned, parent = versions[str(out.resolve())], versions[str(base.resolve())]
        assert tuned.is_active and tuned.parent_id == parent.id
        assert [j.status.value for j in sorted(repo.list_jobs(s, ids["project"]), key=lambda j: j.id)] == \
            ["running", "done", "failed"]
    for e in (engine, *cli_engines):
        e.dispose()


def test_db_upgrade_and_restore_wait_for_the_lock(tmp_path: Path) -> None:
    """`db upgrade` of an older schema and `db restore --force`, while the app's database is locked."""
    old = tmp_path / "old" / "resi.db"
    engine = make_engine(f"sqlite:///{old}")
    upgrade(engine, "0003")
    engine.dispose()
    live = tmp_path / "live" / "resi.db"
    assert cli.main(["--url", f"sqlite:///{live}", "upgrade"]) == 0
    backup = tmp_path / "backup.db"
    assert cli.main(["--url", f"sqlite:///{live}", "backup", str(backup)]) == 0
    for db, command in ((old, ["upgrade"]), (live, ["restore", str(backup), "--force"])):
        url = f"sqlite:///{db}"
        done = _run_all_while_locked(url, {"db " + command[0]: lambda url=url, command=command: cli.main(
            ["--url", url, *command])})
        assert [result for _, result in done.values()] == [0]
    assert cli.main(["--url", f"sqlite:///{old}", "check", ]) == 0
    with sqlite3.connect(live) as conn:  # the restore replaced the other writer's row with the backup's state
        assert conn.execute("SELECT count(*) FROM projects").fetchone() == (0,)
