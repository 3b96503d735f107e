"""The Fine-tune tab's handlers with a REAL tiny checkpoint: validation, a background job that runs
`python -m train finetune` to done and makes its model the project's model, a job that fails, and a
job whose process vanished. The jobs really run as subprocesses (a few iterations each)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from app.class_sets.handlers import save_class_set
from app.config import AppConfig
from app.context import ClassSetChoice, UserState, class_options, find_option, load_context, trained_spaces
from app.events import guarded
from app.finetune.jobs import (
    JOB_START_TIMEOUT_S,
    JobsReport,
    cancel_job,
    finetune_sources,
    job_folder,
    jobs_report,
    list_jobs,
    start_finetune,
    start_prelabel,
)
from app.finetune.models import model_choices, model_summary, use_model
from app.finetune.tab import job_progress_html, jobs_frame
from app.labeling.accept import accept
from app.labeling.edits import add_segment
from app.labeling.images import load_image, open_image
from app.labeling.propose import predict_segments, propose
from app.projects.handlers import create_project, project_overview
from app.projects.upload import upload_images
from app.services import ProcessState, Services, UserError, open_services
from storage import repo
from storage.errors import InvalidInput
from storage.models import JobStatus
from tests.app.conftest import write_image

JOB_TIMEOUT_S = 150
TINY_SPACES = ["street", "portrait", "drive", "parts", "avenue"]  # the world's source label spaces


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job subprocess inherits it
    monkeypatch.delenv("RESI_DATABASE_URL", raising=False)


def real_services(data_dir: Path, checkpoint: Path) -> Services:
    return open_services(AppConfig(data_dir=data_dir, checkpoint=checkpoint, device="cpu"))


def brush(shape: tuple[int, int], rows: slice, cols: slice) -> dict:
    layer = np.zeros((*shape, 4), dtype=np.uint8)
    layer[rows, cols] = 255
    return {"background": None, "layers": [layer], "composite": None}


def labeled_project(svc: Services, tmp_path: Path, accepted: bool = True) -> UserState:
    """Three images with hand-drawn ad-hoc hydrant and sign segments (accepted), and one new image."""
    state = create_project(svc, "streets")
    paths = [write_image(tmp_path / f"{i}.png", color=(40 * i, 90, 200 - 40 * i)) for i in range(4)]
    report = upload_images(svc, state, paths)
    assert len(report.added) == 4
    save_class_set(svc, state, [], "hydrant, sign", [])
    options = class_options(svc, load_context(svc, state))
    image_ids = [int(row[0]) for row in project_overview(svc, state).rows]
    for image_id in image_ids[:3]:
        current, view = open_image(svc, state, image_id)
        shape = view.image.shape[:2]
        current = add_segment(svc, current, "ann", brush(shape, slice(4, 24), slice(4, 28)),
                                find_option(options, "hydrant [adhoc]")).state
        current = add_segment(svc, current, "ann", brush(shape, slice(26, 44), slice(30, 60)),
                                find_option(options, "sign [adhoc]")).state
        if accepted:
            assert accept(svc, current, "ann").ok
    return replace(state, image_id=image_ids[3])


def wait_until_finished(svc: Services, state: UserState, job_id: int,
                        seen: list[tuple[str, float]] | None = None) -> JobsReport:
    """Poll as the UI's timer does; `seen` collects (status, progress) of each look."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        report = jobs_report(svc, state, [job_id])
        if seen is not None:
            seen.append((report.current.status, report.current.progress))
        if report.finished_now:
            return report
        time.sleep(0.3)
    job = next(j for j in list_jobs(svc, state) if j.id == job_id)
    log = Path(job.args["log"])
    pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT_S} s: {job}\n"
                f"{log.read_text() if log.exists() else 'no log'}")


def process_exit(svc: Services, job_id: int) -> ProcessState | None:
    """The job's process state once it has exited (it reports before the interpreter shuts down)."""
    deadline = time.monotonic() + 30
    while (state := svc.jobs.state(job_id, None)) is not None and state.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def test_validation_errors_are_one_clear_message_each(tiny_checkpoint: Path, tmp_path: Path) -> None:
    svc = real_services(tmp_path / "data", tiny_checkpoint)
    with pytest.raises(UserError, match="Open or create a project"):
        start_finetune(svc, UserState(), "hydrants", "adhoc", 3)
    state = labeled_project(svc, tmp_path, accepted=False)
    with pytest.raises(UserError, match="No accepted image has segments of label space 'adhoc' yet"):
        start_finetune(svc, state, "hydrants", "adhoc", 3)
    for image_id in [int(r[0]) for r in project_overview(svc, state).rows][:3]:
        opened, _ = open_image(svc, state, image_id)
        assert accept(svc, opened, "ann").ok
    assert finetune_sources(svc, state) == [("adhoc (3 accepted image(s))", "adhoc")]

    cases = [
        (("hydrants", "street", 3), "No accepted image has segments of label space 'street'"),
        (("", "adhoc", 3), "Name the new label space first"),
        (("  ", "adhoc", 3), "Name the new label space first"),
        (("Street", "adhoc", 3), "has a label space 'street' already"),
        (("a+b", "adhoc", 3), "cannot contain '\\+'"),
        (("../up", "adhoc", 3), "it names files"),
        (("a\\b", "adhoc", 3), "it names files"),
        (("AdHoc", "adhoc", 3), "names the typed ad-hoc classes"),
        (("x" * 101, "adhoc", 3), "at most 100 characters"),
        (("hy\x00drants", "adhoc", 3), "control characters"),
        (("hydrants", "adhoc", 0), "Iterations must be a whole number from 1 to 100000"),
        (("hydrants", "adhoc", 2.5), "Iterations must be a whole number"),
        (("hydrants", "adhoc", None), "Iterations must be a whole number"),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=message):
            start_finetune(svc, state, *args)
    with pytest.warns(UserWarning, match="has a label space 'street' already"):  # what the UI shows
        assert guarded(start_finetune)(svc, state, "street", "adhoc", 3) == gr.skip()

    no_model = real_services(tmp_path / "data", tmp_path / "no-checkpoint")
    with pytest.raises(UserError, match="No model checkpoint at"):
        start_finetune(no_model, state, "hydrants", "adhoc", 3)
    assert list_jobs(svc, state) == []  # nothing was started
    with pytest.raises(UserError, match="Pick what to train: one of lsqe, decoder, all"):
        start_finetune(svc, state, "hydrants", "adhoc", 3, "backbone")
    assert list_jobs(svc, state) == []  # nothing was started
    assert jobs_report(svc, state).current is None and "No job yet" in job_progress_html(None)


def test_a_job_runs_to_done_and_its_model_becomes_the_projects_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    svc = real_services(tmp_path / "data", tiny_checkpoint)
    state = labeled_project(svc, tmp_path)
    assert [s.name for s in trained_spaces(svc, load_context(svc, state))] == TINY_SPACES

    job = start_finetune(svc, state, "hydrants", "adhoc", 30)
    assert job.status in ("queued", "running") and job.space == "hydrants" and job.args["iterations"] == 30
    assert f"--job-id={job.id}" in job.args["command"] and not any("sqlite" in part for part in job.args["command"])
    with pytest.raises(InvalidInput, match=fr"Job {job.id} \(finetune, space 'hydrants'\) has not finished yet"):
        start_finetune(svc, state, "Hydrants", "adhoc", 3)

    seen: list[tuple[str, float]] = []
    report = wait_until_finished(svc, state, job.id, seen)
    assert any(status == "running" and 0.0 <= progress < 1.0 for status, progress in seen), seen
    (finished,) = report.finished_now
    assert finished.status == "done", finished.message
    assert finished.progress == 1.0 and finished.pid is not None and finished.finished_at is not None
    assert finished.message.startswith("Label space 'hydrants' (2 classes, scope lsqe) learned: model version")
    out = Path(finished.result["checkpoint"])
    assert out.parent == (tmp_path / "data" / "models").resolve() and out.name.startswith("hydrants-")
    assert (out / "meta.json").is_file() and Path(finished.args["log"]).is_file()
    assert report.unfinished == () and report.current == finished
    assert process_exit(svc, job.id) == ProcessState(alive=False, returncode=0)  # reaped: no zombie left
    assert jobs_frame(report.jobs).iloc[0].tolist()[:4] == [job.id, "learn 'hydrants' (scope lsqe)", "done", "100%"]
    shown = job_progress_html(finished)
    assert "<progress value='1.000'" in shown and "on 1 held-out image(s)" in shown  # of 3 accepted, 1 held out
    before, after = finished.result["before"], finished.result["after"]
    for name, key in (("PIQ", "piq"), ("PQ", "pq"), ("mIoU", "miou"), ("AP", "ap")):
        value = (before[key], after[key])
        assert f"<td>{name}</td>" in shown and all(v is None or 0 <= v <= 100 for v in value)

    # The version is active exactly when held-out PIQ did not drop; the user may pick it anyway.
    version_id = finished.result["model_version_id"]
    dropped = after["piq"] < before["piq"]
    assert finished.result["active"] is not dropped
    assert ("It is the project's model for proposals now." in shown) is not dropped
    if dropped:
        use_model(svc, state, version_id)
    with svc.sessions() as session:
        active = repo.active_model_version(session, state.project_id)
        assert active.id == version_id and active.checkpoint_path == str(out)
    assert load_context(svc, state).checkpoint == out
    assert [s.name for s in trained_spaces(svc, load_context(svc, state))] == [*TINY_SPACES, "hydrants"]
    assert [s.name for s in trained_spaces(svc)] == TINY_SPACES  # the app's checkpoint is unchanged
    assert "hydrants" in model_summary(svc, state) and "fine-tuned" in model_summary(svc, state)
    choices, in_use = model_choices(svc, state)
    assert in_use == version_id and [v for _, v in choices] == [0, version_id]

    save_class_set(svc, state, ["hydrants"], "", [])
    proposed = propose(svc, state, "ann")
    assert proposed.ok
    with svc.sessions() as session:
        assert repo.latest_proposal(session, state.image_id).model_version_id == version_id
    assert "hydrants" in svc.model.predictor(out).label_spaces
    with pytest.raises(UserError, match="has a label space 'hydrants' already"):
        start_finetune(svc, state, "hydrants", "adhoc", 3)

    # Back to the app's checkpoint, and forth again.
    assert "the app's checkpoint" in use_model(svc, state, 0)
    assert [s.name for s in trained_spaces(svc, load_context(svc, state))] == TINY_SPACES
    assert model_choices(svc, state)[1] == 0
    use_model(svc, state, version_id)
    assert load_context(svc, state).checkpoint == out


def test_a_failing_job_ends_failed_with_its_message_and_the_app_keeps_working(tiny_checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    broken = shutil.copytree(tiny_checkpoint, tmp_path / "broken")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    svc = real_services(tmp_path / "data", broken)
    state = labeled_project(svc, tmp_path)  # the metadata is fine: the job starts, then fails to load
    job = start_finetune(svc, state, "hydrants", "adhoc", 3)
    (failed,) = wait_until_finished(svc, state, job.id).finished_now
    assert failed.status == "failed" and "is corrupt or truncated" in failed.message
    assert failed.finished_at is not None and "\n" not in failed.message
    assert "corrupt or truncated" in job_progress_html(failed)
    assert process_exit(svc, job.id) == ProcessState(alive=False, returncode=2)

    # Nothing changed for the project, and everything that needs no model works.
    assert load_context(svc, state).checkpoint == broken
    assert model_choices(svc, state) == ([("broken (the app's checkpoint)", 0)], 0)
    assert project_overview(svc, state).counts["accepted"] == 3
    state, view = load_image(svc, state)
    added = add_segment(svc, state, "ann", brush(view.image.shape[:2], slice(0, 10), slice(0, 10)),
                          find_option(class_options(svc, load_context(svc, state)), "sign [adhoc]"))
    assert added.ok and accept(svc, added.state, "ann").ok
    assert [j.status for j in list_jobs(svc, state)] == ["failed"]


def test_a_job_whose_process_vanished_is_marked_failed(tmp_path: Path) -> None:
    from tests.app.conftest import FakeModel

    svc = replace(open_services(AppConfig(data_dir=tmp_path / "data")), model=FakeModel())
    state = create_project(svc, "p")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    log = tmp_path / "job.log"
    log.write_text("loading\nKilled\n")
    here = socket.gethostname()
    with svc.sessions.begin() as session:
        killed = repo.create_job(session, state.project_id, "finetune", {"space": "a", "log": str(log), "host": here})
        repo.update_job(session, killed.id, status=JobStatus.RUNNING, pid=gone.pid)
        elsewhere = repo.create_job(session, state.project_id, "finetune", {"space": "b", "host": "other-machine"})
        repo.update_job(session, elsewhere.id, status=JobStatus.RUNNING, pid=gone.pid)
        stale = repo.create_job(session, state.project_id, "finetune", {"space": "c", "host": here})
        stale.created_at -= timedelta(seconds=JOB_START_TIMEOUT_S + 1)
        fresh = repo.create_job(session, state.project_id, "finetune", {"space": "d", "host": here})
        ids = killed.id, elsewhere.id, stale.id, fresh.id
    jobs = {j.id: j for j in list_jobs(svc, state)}
    assert jobs[ids[0]].status == "failed" and jobs[ids[0]].message == \
        "The job's process ended without finishing: Killed"
    assert jobs[ids[1]].status == "running"  # its pid is another machine's: nothing is known here
    assert jobs[ids[2]].status == "failed" and "never started" in jobs[ids[2]].message
    assert jobs[ids[3]].status == "queued"  # just created: its process may still be starting
    assert jobs_report(svc, state, ids).unfinished == (ids[3], ids[1])


def test_job_folders_of_names_with_the_same_ascii_slug_differ(tmp_path: Path) -> None:
    svc = open_services(AppConfig(data_dir=tmp_path / "data", checkpoint=tmp_path / "none", device="cpu"))
    first, second = job_folder(svc, "汽车", 1), job_folder(svc, "火车", 2)
    assert first != second and "job1" in first.name and "job2" in second.name


def test_a_class_set_space_the_model_lacks_is_one_clear_message() -> None:
    class Predictor:
        label_spaces: dict = {}

    choice = ClassSetChoice(label_spaces=("hydrants",), adhoc=(), synonyms=())
    with pytest.raises(UserError, match="no label space 'hydrants'"):
        predict_segments(Predictor(), np.zeros((8, 8, 3), np.uint8), choice)


def test_a_running_job_can_be_cancelled_and_registers_no_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    svc = real_services(tmp_path / "data", tiny_checkpoint)
    state = labeled_project(svc, tmp_path)
    with pytest.raises(UserError, match="No job of this project is running"):
        cancel_job(svc, state)
    job = start_finetune(svc, state, "hydrants", "adhoc", 100000, "decoder")
    assert "--scope=decoder" in job.args["command"] and job.what == "learn 'hydrants' (scope decoder)"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while jobs_report(svc, state).current.status != "running" and time.monotonic() < deadline:
        time.sleep(0.3)
    cancelled = cancel_job(svc, state)
    assert (cancelled.id, cancelled.status, cancelled.message) == (job.id, "failed", "Cancelled by the user.")
    exited = process_exit(svc, job.id)
    assert exited is not None and not exited.alive and exited.returncode == -15  # SIGTERM
    with svc.sessions() as session:
        assert not any(v.training.get("finetune") for v in repo.list_model_versions(session, state.project_id))
    assert jobs_report(svc, state).current.message == "Cancelled by the user."  # not overwritten
    with pytest.raises(UserError, match="No job of this project is running"):
        cancel_job(svc, state)


def test_propose_all_runs_as_a_prelabel_job_that_proposes_every_new_image(tiny_checkpoint: Path,
                                                                          tmp_path: Path) -> None:
    svc = real_services(tmp_path / "data", tiny_checkpoint)
    state = create_project(svc, "streets")
    paths = [write_image(tmp_path / f"{i}.png", color=(40 * i, 90, 200 - 40 * i)) for i in range(3)]
    assert len(upload_images(svc, state, paths).added) == 3
    with pytest.raises(UserError, match="Choose a class set first"):
        start_prelabel(svc, state, "ann")
    save_class_set(svc, state, ["street"], "hydrant", [])
    job = start_prelabel(svc, state, "ann")
    assert job.kind == "prelabel" and job.what == "propose all new images" and job.args["images"] == 3
    assert "--user=ann" in job.args["command"] and f"--checkpoint={tiny_checkpoint.resolve()}" in job.args["command"]
    with pytest.raises(UserError, match=f"Job {job.id} is proposing for the new images already"):
        start_prelabel(svc, state, "ann")
    (finished,) = wait_until_finished(svc, state, job.id).finished_now
    assert finished.status == "done", finished.message
    assert finished.message.startswith("Proposed for 3 of 3 new image(s) of project 'streets'")
    assert finished.result["proposed"] == 3 and "held-out" not in job_progress_html(finished)
    assert project_overview(svc, state).counts["proposed"] == 3
    with svc.sessions() as session:  # the app's checkpoint was registered as the project's model on first use
        (version,) = repo.list_model_versions(session, state.project_id)
        assert version.is_active and finished.result["model_version_id"] == version.id
    with pytest.raises(UserError, match="nothing to propose"):
        start_prelabel(svc, state, "ann")
