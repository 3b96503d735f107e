"""Every write path of the app, while another connection holds SQLite's write lock for a second.

Each handler that saves starts while the other writer holds the lock (and commits a row a second
later); each must wait and succeed: none may fail with "database is locked". They run at once, each on
its own project, image or job, so they do not depend on each other. tests/storage/test_locking.py does
the same for the storage layer and the command line, on PostgreSQL too.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.class_sets.handlers import save_class_set
from app.context import UserState, class_options, find_option, load_context
from app.finetune.jobs import cancel_job, list_jobs, start_finetune
from app.finetune.models import use_model
from app.labeling.accept import accept
from app.labeling.edits import redo, relabel, save_pending_anyway, undo
from app.labeling.images import delete_image, load_image, open_image, skip_image
from app.labeling.propose import propose
from app.projects.handlers import create_project
from app.projects.upload import upload_images
from app.services import Services
from storage import repo
from storage.models import JobStatus
from tests.app.conftest import write_image
from tests.storage.helpers import lock_held


class NoProcesses:
    """Job processes that are never started (the job row is what this test is about)."""

    def start(self, job_id: int, command: Any, cwd: Any, env: Any, log: Path) -> int:
        return 999_999

    def stop(self, job_id: int, pid: int | None) -> bool:
        return True

    def reap(self) -> None:
        pass

    def state(self, job_id: int, pid: int | None) -> Any:
        from app.services import ProcessState

        return ProcessState(alive=False, returncode=1) if pid == 4_000_000 else ProcessState(alive=True)


def _project(svc: Services, tmp_path: Path, name: str, images: int = 1) -> UserState:
    state = create_project(svc, name)
    paths = [write_image(tmp_path / f"{name}-{i}.png", color=(10 * i, 200, 30)) for i in range(images)]
    report = upload_images(svc, state, paths)
    save_class_set(svc, state, ["street"], "hydrant", [])
    return replace(state, image_id=report.first_image_id)


def _opened(svc: Services, state: UserState) -> UserState:
    return open_image(svc, state, state.image_id, "ann")[0]


def test_every_app_write_path_waits_for_the_lock(svc: Services, tmp_path: Path) -> None:
    svc = replace(svc, jobs=NoProcesses())
    user = "ann"
    # One project per write path that needs its own state.
    states = {name: _project(svc, tmp_path, name, images=2 if name in ("accept", "skip", "delete") else 1)
              for name in ("upload", "classes", "open", "propose", "relabel", "pending", "undo", "redo",
                           "accept", "skip", "delete", "finetune", "cancel", "model", "gone")}
    for name in ("relabel", "pending", "undo", "redo", "accept", "delete", "finetune"):
        states[name] = propose(svc, _opened(svc, states[name]), user).state  # also registers the model
    options = class_options(svc, load_context(svc, states["relabel"]))
    hydrant = find_option(options, "hydrant [adhoc]")
    first = lambda st: load_image(svc, st)[1].segments[0].id  # noqa: E731
    states["undo"] = relabel(svc, states["undo"], user, first(states["undo"]), hydrant).state
    states["redo"] = undo(svc, relabel(svc, states["redo"], user, first(states["redo"]), hydrant).state, user).state
    stale = states["pending"]  # someone else saves first: this tab's edit becomes a pending conflict
    relabel(svc, stale, "bob", first(stale), hydrant)
    conflicted = relabel(svc, stale, user, first(stale), hydrant)
    assert not conflicted.ok and conflicted.state.pending is not None
    states["pending"] = conflicted.state
    states["accept"] = accept(svc, states["accept"], user).state  # accepted: a finetune source
    with svc.sessions.begin() as s:
        for name, pid in (("cancel", 123), ("gone", 4_000_000)):  # a running job; one whose process died
            job = repo.create_job(s, states[name].project_id, "finetune",
                                  {"space": "x", "host": socket.gethostname()})
            repo.update_job(s, job.id, status=JobStatus.RUNNING, pid=pid)
        tuned = repo.register_model_version(s, states["model"].project_id, "tuned", str(svc.model.checkpoint),
                                            "e" * 64, [], {"finetune": {"space": "x"}})
    accept(svc, states["finetune"], user)

    paths = {
        "create a project": lambda: create_project(svc, "brand new"),
        "upload": lambda: upload_images(svc, states["upload"], [write_image(tmp_path / "up.png", color=(1, 2, 3))]),
        "save a class set": lambda: save_class_set(svc, states["classes"], ["street", "drive"], "", []),
        "open an image (claim)": lambda: open_image(svc, states["open"], states["open"].image_id, user),
        "first Propose (registers the model)": lambda: propose(svc, _opened(svc, states["propose"]), user),
        "relabel": lambda: relabel(svc, states["relabel"], user, first(states["relabel"]), hydrant),
        "save mine anyway": lambda: save_pending_anyway(svc, states["pending"], user),
        "undo": lambda: undo(svc, states["undo"], user),
        "redo": lambda: redo(svc, states["redo"], user),
        "accept & next": lambda: accept(svc, _opened(svc, states["skip"]), user, empty_ok=True),
        "skip": lambda: skip_image(svc, states["skip"], user),
        "delete image": lambda: delete_image(svc, _opened(svc, states["delete"]), user),
        "start fine-tuning": lambda: start_finetune(svc, states["finetune"], "hydrants", "adhoc", 5),
        "cancel a job": lambda: cancel_job(svc, states["cancel"]),
        "mark a vanished job failed": lambda: list_jobs(svc, states["gone"]),
        "use a fine-tuned model": lambda: use_model(svc, states["model"], tuned.id),
    }

    def timed(path: Any) -> tuple[float, Any]:
        try:
            result = path()
        except Exception as exc:  # noqa: BLE001 - reported below
            result = exc
        return time.monotonic(), result

    url = svc.sessions.kw["bind"].url.render_as_string(hide_password=False)
    with lock_held(url) as times, ThreadPoolExecutor(len(paths)) as pool:
        futures = {name: pool.submit(timed, path) for name, path in paths.items()}
        done = {name: future.result() for name, future in futures.items()}
    failed = {name: f"{type(r).__name__}: {r}" for name, (_, r) in done.items() if isinstance(r, Exception)}
    assert not failed, failed
    refused = {name: r.message for name, (_, r) in done.items() if getattr(r, "ok", True) is False}
    assert not refused, refused
    early = [name for name, (finished, _) in done.items() if finished < times["released"]]
    assert not early, f"these did not wait for the lock: {early}"
    with svc.sessions() as s:
        assert repo.get_project_by_name(s, "brand new")
        jobs = {j.project_id: j for j in repo.list_jobs(s, states["cancel"].project_id)}
        assert jobs[states["cancel"].project_id].message == "Cancelled by the user."
        assert repo.list_jobs(s, states["gone"].project_id)[0].status == JobStatus.FAILED
        assert [v.id for v in repo.list_model_versions(s, states["model"].project_id) if v.is_active] == [tuned.id]
