"""Background jobs of a project, each a `python -m train ...` subprocess that reports its progress through
storage: fine-tuning (learn a new label space from the accepted segments, `train finetune`) and
pre-labeling (propose for every new image, `train prelabel`); list, watch and cancel them."""

from __future__ import annotations

import os
import socket
import sys
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.context import UserState, file_slug, load_context, require_project
from app.services import Services, UserError, database_url
from resi_core.labels import ADHOC_SPACE, MAX_CLASS_NAME_LEN, normalize_name
from storage import repo
from storage.db import DATABASE_URL_ENV
from storage.errors import InvalidInput
from storage.models import ImageStatus, Job, JobStatus

FINETUNE_KIND = "finetune"
PRELABEL_KIND = "prelabel"
# What `train finetune --scope` trains (docs/MODEL.md, "Fine-tuning"); the app never imports train/.
FINETUNE_SCOPES = {
    "lsqe": "the new space's query embeddings only: fast, and every other label space stays exactly as it is",
    "decoder": "also the transformer decoder and classifier: the new space learns more, but they are shared, so "
               "the model's other label spaces get worse",
    "all": "every weight: the new space learns most, the other label spaces get much worse; slowest",
}
DEFAULT_FINETUNE_SCOPE = "lsqe"
DEFAULT_FINETUNE_ITERATIONS = 300
MAX_FINETUNE_ITERATIONS = 100_000
# A queued job that no process has claimed after this long never started (the app stopped in between).
JOB_START_TIMEOUT_S = 120
# `python -m train ...` runs from here: the app starts jobs as commands and never imports train/.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
JOB_COLUMNS = ["job", "what", "status", "progress", "message", "started (UTC)", "finished (UTC)"]


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    status: str  # queued, running, done, failed
    progress: float  # 0..1
    message: str
    args: dict[str, Any]
    result: dict[str, Any]
    pid: int | None
    created_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.FAILED)

    @property
    def space(self) -> str:
        return str(self.args.get("space", ""))

    @property
    def what(self) -> str:
        """What the job does, in a few words."""
        if self.kind == PRELABEL_KIND:
            return "propose all new images"
        return f"learn {self.space!r} (scope {self.args.get('scope', DEFAULT_FINETUNE_SCOPE)})"

    @property
    def row(self) -> list[Any]:
        return [self.id, self.what, self.status, f"{self.progress:.0%}", self.message, _when(self.created_at),
                _when(self.finished_at)]


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # SQLite gives naive UTC times


def _when(moment: datetime | None) -> str:
    return "" if moment is None else _utc(moment).strftime("%Y-%m-%d %H:%M:%S")


def _job_view(job: Job) -> JobView:
    return JobView(job.id, job.kind, JobStatus(job.status).value, job.progress, job.message, dict(job.args),
                   dict(job.result), job.pid, job.created_at, job.finished_at)


def finetune_sources(svc: Services, state: UserState) -> list[tuple[str, str]]:
    """(label, label space) of the segments a new space can learn from: the spaces of accepted
    segments with their image counts, the ad-hoc classes first (always listed: the default)."""
    project_id = require_project(state)
    with svc.sessions() as session:
        counts = repo.accepted_label_spaces(session, project_id)
    counts.setdefault(ADHOC_SPACE, 0)
    order = sorted(counts, key=lambda space: (space != ADHOC_SPACE, space))
    return [(f"{space} ({counts[space]} accepted image(s))", space) for space in order]


def _iterations(value: float | int | str | None) -> int:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = float("nan")
    if not (number.is_integer() and 1 <= number <= MAX_FINETUNE_ITERATIONS):
        raise UserError(f"Iterations must be a whole number from 1 to {MAX_FINETUNE_ITERATIONS}.")
    return int(number)


def _new_space_name(raw: str | None, trained: Sequence[str]) -> str:
    name = " ".join((raw or "").split())
    if not name:
        raise UserError("Name the new label space first (e.g. 'hydrants').")
    if len(name) > MAX_CLASS_NAME_LEN:
        raise UserError(f"A label space name has at most {MAX_CLASS_NAME_LEN} characters.")
    if "+" in name:
        raise UserError("A label space name cannot contain '+': it joins the spaces of a fused segment.")
    if any(ch in name for ch in "/\\") or name.startswith("."):
        raise UserError("A label space name cannot contain '/' or '\\' or start with '.': it names files.")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise UserError("A label space name cannot contain control characters.")
    if normalize_name(name) == ADHOC_SPACE:
        raise UserError(f"{ADHOC_SPACE!r} names the typed ad-hoc classes; pick another name for the new space.")
    taken = next((t for t in trained if normalize_name(t) == normalize_name(name)), None)
    if taken is not None:
        raise UserError(f"The model in use has a label space {taken!r} already; pick a new name.")
    return name


def job_folder(svc: Services, space: str, job_id: int) -> Path:
    """A new DATA_DIR/models/<space>-job<id>-<timestamp> path (nothing is created). The job id keeps two
    names with the same ASCII slug (汽车, 火车 → "space") from sharing a folder."""
    models = svc.config.data_dir.resolve() / "models"
    stem = f"{file_slug(space, 'space')}-job{job_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = models / stem, 2
    while out.exists() or _job_log(out).exists():
        out, n = models / f"{stem}-{n}", n + 1
    return out


def _job_log(out: Path) -> Path:
    # Beside the checkpoint folder, not in it: a model version is named by the hash of its folder's files.
    return out.parent / f"{out.name}.log"


def _job_device(device: str) -> str:
    return device if device in ("auto", "cpu", "cuda") else "cuda" if device.startswith("cuda") else "auto"


def start_finetune(svc: Services, state: UserState, space: str | None, from_space: str | None,
                   iterations: float | int | str | None = DEFAULT_FINETUNE_ITERATIONS,
                   scope: str | None = DEFAULT_FINETUNE_SCOPE) -> JobView:
    """Learn a new label space from the project's accepted segments of `from_space`, in the background.

    Records a queued job, then starts `python -m train finetune ... --scope S --job-id N` detached; the
    job writes its progress to its row and measures a held-out fifth of the images before and after.
    When done, its model is registered, and it is the project's active one (proposals switch to it on
    their own) if held-out PIQ did not drop; `list_jobs` shows the figures and which happened.
    """
    project_id = require_project(state)
    n_iterations = _iterations(iterations)
    if scope not in FINETUNE_SCOPES:
        raise UserError(f"Pick what to train: one of {', '.join(FINETUNE_SCOPES)}.")
    source = " ".join((from_space or "").split()) or ADHOC_SPACE
    ctx = load_context(svc, state)
    with svc.sessions() as session:
        n_images = repo.accepted_label_spaces(session, project_id).get(source, 0)
    if not n_images:
        raise UserError(f"No accepted image has segments of label space {source!r} yet: label and accept some "
                        "images first (Label tab), or pick other segments to learn from.")
    info = svc.model.info(ctx.checkpoint)  # a missing or unreadable checkpoint is one message
    name = _new_space_name(space, [s.name for s in info.label_spaces])
    with svc.sessions.begin() as session:
        # It locks the project first: two clicks (or two app hosts) never start the same space twice.
        job = repo.create_job(session, project_id, FINETUNE_KIND, {"space": name}, unique_by="space")
        out = job_folder(svc, name, job.id)
        # --flag=value: a name that starts with '-' stays a value.
        command = [
            sys.executable, "-m", "train", "finetune", f"--checkpoint={Path(info.path).resolve()}",
            f"--space={name}", f"--project={ctx.name}", f"--from-space={source}",
            f"--data-dir={svc.config.data_dir.resolve()}", f"--iterations={n_iterations}", f"--out={out}",
            f"--scope={scope}", f"--job-id={job.id}", "--no-progress",
            f"--device={_job_device(svc.config.device)}",
        ]
        job.args = {"space": name, "from_space": source, "iterations": n_iterations, "images": n_images, "scope": scope,
                    "checkpoint": str(Path(info.path).resolve()), "out": str(out), "log": str(_job_log(out)),
                    "host": socket.gethostname(), "command": command}
        job_id = job.id
    return _start(svc, job_id, command, _job_log(out), "fine-tuning")


def _start(svc: Services, job_id: int, command: list[str], log: Path, what: str) -> JobView:
    """Start a recorded job's process detached; a process that cannot start fails the job at once."""
    # The database URL goes by environment, so a password never shows in the process list.
    env = {**os.environ, DATABASE_URL_ENV: database_url(svc.config)}
    try:
        svc.jobs.start(job_id, command, PROJECT_ROOT, env, log)
    except OSError as exc:
        with svc.sessions.begin() as session:
            repo.update_job(session, job_id, status=JobStatus.FAILED, message=f"The job could not start: {exc}")
        raise UserError(f"The {what} job could not start: {exc}.") from exc
    with svc.sessions() as session:
        return _job_view(repo.get_job(session, job_id))


def start_prelabel(svc: Services, state: UserState, user: str) -> JobView:
    """Propose for every new image of the project in the background (`python -m train prelabel`), with
    the project's class set and model, as the Propose button does for one image. Each image is written
    in one transaction, so a cancelled job leaves no half-written image; starting it again continues."""
    project_id = require_project(state)
    ctx = load_context(svc, state)
    if ctx.class_set is None or ctx.class_set.id is None:
        raise UserError("Choose a class set first (Class set tab): the model needs to know what to look for.")
    info = svc.model.info(ctx.checkpoint)  # a missing or unreadable checkpoint is one message
    with svc.sessions() as session:
        new = len(repo.image_ids(session, project_id, [ImageStatus.NEW]))
    if not new:
        raise UserError("Every image of the project has proposals or edits already: nothing to propose.")
    with svc.sessions.begin() as session:
        repo.lock_project(session, project_id)  # the check and the insert one at a time: one job per project
        busy = next((j for j in repo.list_jobs(session, project_id) if j.kind == PRELABEL_KIND
                     and j.status not in repo.FINISHED_JOB_STATUSES), None)
        if busy is not None:
            raise UserError(f"Job {busy.id} is proposing for the new images already; its progress is on the "
                            "Fine-tune tab.")
        job = repo.create_job(session, project_id, PRELABEL_KIND, {})
        log = svc.config.data_dir.resolve() / "jobs" / f"prelabel-job{job.id}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        command = [
            sys.executable, "-m", "train", "prelabel", f"--project={ctx.name}",
            f"--checkpoint={Path(info.path).resolve()}", f"--data-dir={svc.config.data_dir.resolve()}",
            f"--user={user}", f"--job-id={job.id}", "--no-progress", f"--device={_job_device(svc.config.device)}",
            *(["--no-domain-aware"] if svc.model.out_of_domain_threshold is None else []),
        ]
        job.args = {"images": new, "checkpoint": str(Path(info.path).resolve()), "log": str(log),
                    "host": socket.gethostname(), "command": command}
        job_id = job.id
    log.parent.mkdir(parents=True, exist_ok=True)
    return _start(svc, job_id, command, log, "pre-labeling")


def _log_tail(log: str | None) -> str:
    """The last line a job's process wrote (its error, usually)."""
    if not log:
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(max(fh.seek(0, os.SEEK_END) - 4096, 0))
            lines = [line.strip() for line in fh.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    last = lines[-1] if lines else ""
    return (last.removeprefix("error: ")[:300]).strip()


def _check_process(svc: Services, job: JobView) -> None:
    """Mark an unfinished job failed when its process is gone (killed, out of memory, or it died before
    it could report); a job that could report has done so before it exited."""
    # A pid means something only on the machine that started the job (apps may share a PostgreSQL database).
    pid = job.pid if job.args.get("host") == socket.gethostname() else None
    process = svc.jobs.state(job.id, pid)
    if process is None:
        age = (datetime.now(UTC) - _utc(job.created_at)).total_seconds()
        if job.status != JobStatus.QUEUED or age < JOB_START_TIMEOUT_S:
            return
        reason = "never started"
    elif process.alive:
        return
    elif process.returncode is not None and process.returncode < 0:
        reason = f"was stopped by signal {-process.returncode}"
    elif process.returncode is not None:
        reason = f"ended with exit code {process.returncode}"
    else:
        reason = "ended"
    tail = _log_tail(job.args.get("log"))
    message = f"The job's process {reason} without finishing" + (f": {tail}" if tail else ".")
    try:
        with svc.sessions.begin() as session:
            if repo.get_job(session, job.id).status not in repo.FINISHED_JOB_STATUSES:
                repo.update_job(session, job.id, status=JobStatus.FAILED, message=message)
    except InvalidInput:  # it finished in between
        pass


def list_jobs(svc: Services, state: UserState) -> list[JobView]:
    """The project's jobs, newest first; an unfinished one whose process is gone is marked failed first."""
    project_id = require_project(state)
    svc.jobs.reap()
    with svc.sessions() as session:
        jobs = [_job_view(j) for j in repo.list_jobs(session, project_id)]
    unfinished = [j for j in jobs if not j.finished]
    for job in unfinished:
        _check_process(svc, job)
    if unfinished:
        with svc.sessions() as session:
            jobs = [_job_view(j) for j in repo.list_jobs(session, project_id)]
    return jobs


@dataclass(frozen=True)
class JobsReport:
    jobs: list[JobView]  # newest first
    finished_now: list[JobView]  # jobs that were watched (unfinished before) and are done or failed now

    @property
    def unfinished(self) -> tuple[int, ...]:
        return tuple(j.id for j in self.jobs if not j.finished)

    @property
    def current(self) -> JobView | None:
        """The job to show: the newest unfinished one, else the newest."""
        return next((j for j in self.jobs if not j.finished), self.jobs[0] if self.jobs else None)


def jobs_report(svc: Services, state: UserState, watched: Sequence[int] = ()) -> JobsReport:
    jobs = list_jobs(svc, state)
    ids = set(watched)
    return JobsReport(jobs, [j for j in jobs if j.id in ids and j.finished])


def cancel_job(svc: Services, state: UserState) -> JobView:
    """Stop the project's newest running job: it is marked failed ("cancelled") first, so a fine-tuning
    job that ends in between cannot register a half-finished model, then its process group gets SIGTERM
    (a pre-labeling job keeps the images it finished; the one in progress is not written)."""
    job = next((j for j in list_jobs(svc, state) if not j.finished), None)
    if job is None:
        raise UserError("No job of this project is running.")
    host = job.args.get("host")
    if host != socket.gethostname():
        raise UserError(f"Job {job.id} runs on host {host!r}; cancel it from the app on that machine.")
    try:
        with svc.sessions.begin() as session:
            repo.update_job(session, job.id, status=JobStatus.FAILED, message="Cancelled by the user.")
    except InvalidInput:  # it finished in between: nothing to cancel
        raise UserError(f"Job {job.id} finished before it could be cancelled.") from None
    svc.jobs.stop(job.id, job.pid)
    with svc.sessions() as session:
        return _job_view(repo.get_job(session, job.id))
