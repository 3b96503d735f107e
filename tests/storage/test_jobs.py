"""Jobs: a long job's process records its status and progress; the caller owns the transaction.
On SQLite and PostgreSQL (the `sessions` fixture is parametrized)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.errors import Correction, InvalidInput, NotFound
from storage.files import FileStore
from storage.models import EventType, JobStatus
from tests.storage.helpers import png_bytes, segment

H, W = 48, 64


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite returns naive UTC


def test_job_lifecycle_queued_running_done(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        project_id = repo.create_project(s, "Streets").id
        job = repo.create_job(s, project_id, "finetune", {"space": "hydrants", "iterations": 300})
        job_id = job.id
    with sessions() as s:
        job = repo.get_job(s, job_id)
        assert job.status is JobStatus.QUEUED and job.progress == 0.0 and job.message == ""
        assert job.args == {"space": "hydrants", "iterations": 300} and job.result == {}
        assert job.pid is None and job.finished_at is None and job.kind == "finetune"
        created = job.created_at

    with sessions.begin() as s:
        repo.update_job(s, job_id, status="running", pid=4242, message="loading")
    with sessions.begin() as s:
        repo.update_job(s, job_id, progress=0.5, message="iteration 150/300, loss 1.2")
    with sessions() as s:
        job = repo.get_job(s, job_id)
        assert (job.status, job.pid, job.progress, job.message) == (JobStatus.RUNNING, 4242, 0.5,
                                                                     "iteration 150/300, loss 1.2")
        assert job.finished_at is None and _aware(job.updated_at) >= _aware(created)

    with sessions.begin() as s:
        repo.update_job(s, job_id, status=JobStatus.DONE, message="done",
                        result={"checkpoint": "/models/hydrants", "model_version_id": 7})
    with sessions() as s:
        job = repo.get_job(s, job_id)
        assert job.status is JobStatus.DONE and job.progress == 1.0
        assert job.result == {"checkpoint": "/models/hydrants", "model_version_id": 7}
        assert job.finished_at is not None and _aware(job.finished_at) >= _aware(created)


def test_failed_job_keeps_its_message_and_progress_and_is_final(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        job_id = repo.create_job(s, project_id, "finetune").id
        repo.update_job(s, job_id, status=JobStatus.RUNNING, progress=0.25)
        repo.update_job(s, job_id, status=JobStatus.FAILED, message="Checkpoint is corrupt or truncated.")
    with sessions.begin() as s:
        job = repo.get_job(s, job_id)
        assert job.status is JobStatus.FAILED and job.progress == 0.25 and job.finished_at is not None
        with pytest.raises(InvalidInput, match="failed already"):
            repo.update_job(s, job_id, status=JobStatus.DONE)
        with pytest.raises(InvalidInput, match="failed already"):
            repo.update_job(s, job_id, progress=0.5)
    with sessions() as s:
        assert repo.get_job(s, job_id).message == "Checkpoint is corrupt or truncated."


def test_list_jobs_newest_first_per_project(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        a = repo.create_project(s, "a").id
        b = repo.create_project(s, "b").id
        first = repo.create_job(s, a, "finetune").id
        other = repo.create_job(s, b, "finetune").id
        second = repo.create_job(s, a, "prelabel").id
    with sessions() as s:
        assert [j.id for j in repo.list_jobs(s, a)] == [second, first]
        assert [j.id for j in repo.list_jobs(s, b)] == [other]
        with pytest.raises(NotFound):
            repo.list_jobs(s, 999)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "paused"}, "Unknown job status"),
        ({"progress": 1.5}, "not in \\[0, 1\\]"),
        ({"progress": -0.1}, "not in \\[0, 1\\]"),
        ({"progress": math.nan}, "not in \\[0, 1\\]"),
        ({"pid": 0}, "positive integer"),
    ],
)
def test_bad_updates_are_clear_errors_and_write_nothing(sessions: sessionmaker[Session], change: dict,
                                                        message: str) -> None:
    with sessions.begin() as s:
        job_id = repo.create_job(s, repo.create_project(s, "p").id, "finetune").id
    with sessions.begin() as s, pytest.raises(InvalidInput, match=message):
        repo.update_job(s, job_id, **change)
    with sessions() as s:
        job = repo.get_job(s, job_id)
        assert job.status is JobStatus.QUEUED and job.progress == 0.0 and job.pid is None


def test_job_errors(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        with pytest.raises(NotFound):
            repo.create_job(s, 999, "finetune")
        with pytest.raises(InvalidInput, match="empty"):
            repo.create_job(s, project_id, " ")
        with pytest.raises(InvalidInput, match="longer than 32"):
            repo.create_job(s, project_id, "x" * 33)
        with pytest.raises(NotFound, match="no job with id 5"):
            repo.get_job(s, 5)
        with pytest.raises(NotFound):
            repo.update_job(s, 5, progress=0.1)
        job_id = repo.create_job(s, project_id, "finetune").id
        repo.update_job(s, job_id, status="running")
        with pytest.raises(InvalidInput, match="cannot be queued again"):
            repo.update_job(s, job_id, status="queued")


def test_deleting_a_project_deletes_its_jobs(sessions: sessionmaker[Session]) -> None:
    from sqlalchemy import delete, func, select

    from storage.models import Job, Project

    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        repo.create_job(s, project_id, "finetune")
    with sessions.begin() as s:
        s.execute(delete(Project).where(Project.id == project_id))
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 0


def test_accepted_label_spaces_counts_accepted_images_per_space(sessions: sessionmaker[Session],
                                                               store: FileStore) -> None:
    with sessions.begin() as s:
        project_id = repo.create_project(s, "p").id
        for seed, segments, accept in [
            (0, [segment("a", H, W, (0, 0, 9, 9), "hydrant", "adhoc"), segment("b", H, W, (9, 9, 19, 19), "sign",
                                                                                 "adhoc")], True),
            (1, [segment("c", H, W, (0, 0, 9, 9), "car", "street")], True),
            (2, [segment("d", H, W, (0, 0, 9, 9), "hydrant", "adhoc")], False),  # not accepted
        ]:
            image, _ = repo.add_image(s, store, project_id, png_bytes(W, H, seed), f"{seed}.png")
            version = repo.apply_correction(s, image.id, 0, "ann", Correction(EventType.ADD, after=segments))
            if accept:
                repo.accept(s, image.id, version, "ann")
    with sessions() as s:
        assert repo.accepted_label_spaces(s, project_id) == {"adhoc": 1, "street": 1}
