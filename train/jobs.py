"""How a `python -m train ...` job started with `--job-id` reports to its row in the `jobs` table.

The app starts long jobs as subprocesses and shows their progress by reading that row, so a job
never needs the app and a crashed job never takes the app down. Each report is its own short
transaction; progress is written at most about once a second, status changes always.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage import repo
from storage.db import make_session_factory
from storage.errors import Busy, InvalidInput, StorageError
from storage.models import JobStatus
from train.database import open_database

PROGRESS_INTERVAL_S = 1.0


def one_line(text: object) -> str:
    return " ".join(str(text).split())


class JobReporter:
    """Writes a job's status, progress and result; `project_id` guards against a wrong --job-id."""

    def __init__(self, sessions: sessionmaker[Session], job_id: int, project_id: int,
                 interval_s: float = PROGRESS_INTERVAL_S, clock: Callable[[], float] = time.monotonic):
        self.sessions = sessions
        self.job_id = job_id
        self.interval_s = interval_s
        self.clock = clock
        self._last_write = -float("inf")
        with sessions() as session:
            job = repo.get_job(session, job_id)
            if job.project_id != project_id:
                raise InvalidInput(f"Job {job_id} belongs to another project (id {job.project_id}).")
            if job.status in repo.FINISHED_JOB_STATUSES:
                raise InvalidInput(f"Job {job_id} is {job.status.value} already; start a new job.")

    def start(self, message: str) -> None:
        """Mark the job running with this process's id."""
        with self.sessions.begin() as session:
            repo.update_job(session, self.job_id, status=JobStatus.RUNNING, pid=os.getpid(), progress=0.0,
                            message=message)
        self._last_write = self.clock()

    def progress(self, fraction: float, message: str, force: bool = False) -> None:
        """Record progress unless the last write is less than `interval_s` ago (`force`: a new phase,
        written anyway). A failed write is only a warning: the job goes on, and the next report tries again."""
        now = self.clock()
        if not force and now - self._last_write < self.interval_s:
            return
        try:
            with self.sessions.begin() as session:
                repo.update_job(session, self.job_id, progress=min(max(fraction, 0.0), 1.0), message=message)
        except (SQLAlchemyError, Busy) as err:
            print(f"warning: could not record the job's progress: {one_line(err)}", file=sys.stderr)
        self._last_write = now

    def iteration_callback(self, total: int) -> Callable[[int, float], None]:
        """`on_step(iterations done, loss)` for a training loop of `total` iterations."""

        def on_step(done: int, loss: float) -> None:
            self.progress(done / total, f"iteration {done}/{total}, loss {loss:.3f}")

        return on_step

    def done(self, message: str, result: dict[str, Any]) -> None:
        with self.sessions.begin() as session:
            repo.update_job(session, self.job_id, status=JobStatus.DONE, progress=1.0, message=message,
                            result=result)

    def failed(self, message: str) -> None:
        """Mark the job failed; never raises, so the error that failed it is the one reported."""
        try:
            with self.sessions.begin() as session:
                repo.update_job(session, self.job_id, status=JobStatus.FAILED, message=one_line(message))
        except Exception as err:  # noqa: BLE001 - the job is failing already; say why this report failed too
            print(f"warning: could not mark job {self.job_id} failed: {one_line(err)}", file=sys.stderr)


def open_job(args: argparse.Namespace) -> tuple[JobReporter, Engine]:
    """The reporter of `--job-id`, on its own engine; the job must belong to `--project`."""
    engine = open_database(args)
    try:
        sessions = make_session_factory(engine)
        with sessions() as session:
            project_id = repo.get_project_by_name(session, args.project).id
        return JobReporter(sessions, args.job_id, project_id), engine
    except BaseException:
        engine.dispose()
        raise


def run_as_job(args: argparse.Namespace, run: Callable[[argparse.Namespace, JobReporter | None], int],
               start_message: str) -> int:
    """A command's main: `run(args, job)`, with `--job-id`'s row marked running first and failed on any
    error. A user's error (ValueError, OSError, StorageError: checkpoint, data, storage, device) is one
    line on stderr and exit code 2; a crash is marked failed and raised."""
    job = engine = None
    try:
        if args.job_id is not None:
            job, engine = open_job(args)
            job.start(start_message)
        return run(args, job)
    except (ValueError, OSError, StorageError) as err:
        message = one_line(err)
        print("error: " + message, file=sys.stderr)
        if job is not None:
            job.failed(message)
        return 2
    except BaseException as err:  # a crash or Ctrl-C: the job must not stay "running"
        if job is not None:
            job.failed(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)
        raise
    finally:
        if engine is not None:
            engine.dispose()
