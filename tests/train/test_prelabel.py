"""`python -m train prelabel`: every new image of a project gets one proposal that seeds its annotation,
one transaction per image, so a stopped run leaves no half-written image and a rerun continues; with
--job-id the run reports to its jobs row; user errors are one line with exit code 2."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from storage import repo
from storage.errors import Correction
from storage.files import FileStore, path_sha256
from storage.models import EventType, ImageStatus, JobStatus, Proposal
from tests.storage.helpers import png_bytes, segment
from tests.train.conftest import project_database
from train.prelabel import main

H, W = 48, 64


@pytest.fixture(autouse=True)
def _offline(offline):
    """No network (tests/train/conftest.py), which also gives `base`, a tiny untrained checkpoint."""


@pytest.fixture
def project(tmp_path, base):
    """Project Streets: class set street + portrait (the tiny model's), the tiny model active, five new
    images and one that a labeler has edited already."""
    data_dir = tmp_path / "data"
    engine, sessions, store = project_database(data_dir)
    with sessions.begin() as s:
        project_id = repo.create_project(s, "Streets").id
        repo.set_class_set(s, project_id, ["street", "portrait"], [], [])
        repo.register_model_version(s, project_id, "tiny", str(base), path_sha256(base), [], {}, active=True)
        new = [repo.add_image(s, store, project_id, png_bytes(W, H, seed), f"{seed}.png")[0].id for seed in range(5)]
        edited, _ = repo.add_image(s, store, project_id, png_bytes(W, H, 9), "edited.png")
        repo.apply_correction(s, edited.id, edited.version, "ann",
                              Correction(EventType.ADD, after=[segment("a", H, W, (0, 0, 9, 9))]))
    yield data_dir, sessions, project_id, new, edited.id
    engine.dispose()


def args(data_dir, *extra: str) -> list[str]:
    return ["--project", "Streets", "--data-dir", str(data_dir), "--device", "cpu", "--threads", "1",
            "--no-progress", *extra]


def proposals(sessions, image_id: int) -> list[Proposal]:
    with sessions() as s:
        return list(s.scalars(select(Proposal).where(Proposal.image_id == image_id)))


def statuses(sessions, ids) -> list[ImageStatus]:
    with sessions() as s:
        return [repo.get_image(s, i).status for i in ids]


def test_every_new_image_is_proposed_once_and_a_rerun_continues(project, capsys):
    data_dir, sessions, project_id, new, edited = project
    assert main(args(data_dir, "--limit", "2")) == 0
    assert "Proposed for 2 of 2 new image(s) of project 'Streets'" in capsys.readouterr().out
    assert statuses(sessions, new) == [ImageStatus.PROPOSED] * 2 + [ImageStatus.NEW] * 3

    assert main(args(data_dir)) == 0  # continues with the three still new
    assert "Proposed for 3 of 3 new image(s)" in capsys.readouterr().out
    assert statuses(sessions, new) == [ImageStatus.PROPOSED] * 5
    for image_id in new:
        (proposal,) = proposals(sessions, image_id)
        with sessions() as s:
            annotation = repo.current_annotation(s, image_id)
            (event,) = repo.history(s, image_id)
        assert [seg.to_json() for seg in annotation.segments] == json.loads(proposal.segments)  # seeded from it
        assert event.event_type == EventType.PROPOSE and event.user == "model"
    assert proposals(sessions, edited) == [] and statuses(sessions, [edited]) == [ImageStatus.IN_REVIEW]

    assert main(args(data_dir)) == 0
    assert capsys.readouterr().out.startswith("Nothing to propose: every image of project 'Streets'")


def test_a_run_stopped_inside_an_image_leaves_it_untouched(project, monkeypatch):
    data_dir, sessions, project_id, new, _ = project
    real = repo.save_proposal
    calls = []

    def killed_after_writing(session, *a, **kw):  # the process dies after the rows are written, before commit
        calls.append(1)
        real(session, *a, **kw)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(repo, "save_proposal", killed_after_writing)
    with pytest.raises(KeyboardInterrupt):
        main(args(data_dir))
    assert statuses(sessions, new) == [ImageStatus.PROPOSED] + [ImageStatus.NEW] * 4
    assert proposals(sessions, new[1]) == []
    with sessions() as s:
        assert repo.history(s, new[1]) == [] and repo.current_annotation(s, new[1]).segments == []
    monkeypatch.setattr(repo, "save_proposal", real)
    assert main(args(data_dir)) == 0
    assert statuses(sessions, new) == [ImageStatus.PROPOSED] * 5
    assert [len(proposals(sessions, i)) for i in new] == [1] * 5


def test_job_reports_progress_and_ends_done_with_the_counts(project, capsys):
    data_dir, sessions, project_id, new, _ = project
    store = FileStore(data_dir / "images")
    with sessions() as s:
        broken = repo.get_image(s, new[2]).sha256
    store.path(broken).chmod(0o644)
    store.path(broken).write_bytes(b"not an image any more")
    with sessions.begin() as s:
        job_id = repo.create_job(s, project_id, "prelabel", {}).id
    assert main(args(data_dir, "--job-id", str(job_id))) == 0
    assert f"warning: image {new[2]}:" in capsys.readouterr().err
    with sessions() as s:
        job = repo.get_job(s, job_id)
    assert job.status is JobStatus.DONE and job.progress == 1.0
    assert job.result["proposed"] == 4 and job.result["images"] == 5 and len(job.result["failed"]) == 1
    assert job.message.startswith("Proposed for 4 of 5 new image(s) of project 'Streets'") and "1 failed" in job.message
    assert statuses(sessions, new) == [ImageStatus.PROPOSED] * 2 + [ImageStatus.NEW] + [ImageStatus.PROPOSED] * 2


def test_user_errors_are_one_line_and_touch_nothing(project, base, tmp_path, capsys):
    data_dir, sessions, project_id, new, _ = project
    with sessions.begin() as s:
        repo.create_project(s, "Bare")
        repo.set_class_set(s, project_id, ["street", "drive"], ["hydrant"], [])
    cases = [
        (["--project", "Nope"], "There is no project named 'Nope'"),
        (["--project", "Bare"], "Project 'Bare' has no class set yet"),
        ([], "class set does not fit"),  # drive is not a label space of the tiny model
        (["--data-dir", str(tmp_path / "elsewhere")], "There is no database at"),
        (["--checkpoint", str(tmp_path / "none")], "meta.json is missing"),
    ]
    for extra, message in cases:
        assert main(args(data_dir, *extra)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    with sessions.begin() as s:
        repo.set_class_set(s, repo.get_project_by_name(s, "Bare").id, ["street"], [], [])
    assert main(args(data_dir, "--project", "Bare")) == 2
    assert "Project 'Bare' has no active model yet: pass --checkpoint" in capsys.readouterr().err
    assert statuses(sessions, new) == [ImageStatus.NEW] * 5
    with pytest.raises(SystemExit) as exit_info:
        main(args(data_dir, "--limit", "0"))
    assert exit_info.value.code == 2 and "--limit must be at least 1" in capsys.readouterr().err


def test_images_the_model_flags_are_stored_as_flagged(project, base, tmp_path, capsys):
    """A checkpoint whose familiarity check flags every image (its one familiar kind lies far from any
    image's features): each proposal is stored with the flag, the run says how many, the job counts them."""
    import torch

    from resi_core.model import load_checkpoint, save_checkpoint

    data_dir, sessions, project_id, new, _ = project
    model = load_checkpoint(base)
    dim = model.pooled_dim()
    model.set_familiarity(["far"], torch.full((1, dim), 1e3), torch.eye(dim)[None], threshold=1.0)
    flagging = save_checkpoint(tmp_path / "flagging", model)
    with sessions.begin() as s:
        job_id = repo.create_job(s, project_id, "prelabel", {}).id
    assert main(args(data_dir, "--checkpoint", str(flagging), "--limit", "2", "--job-id", str(job_id))) == 0
    assert "2 look unlike anything the model was trained on" in capsys.readouterr().out
    assert [p.unfamiliar for i in new[:2] for p in proposals(sessions, i)] == [True, True]
    with sessions() as s:
        assert repo.get_job(s, job_id).result["unfamiliar"] == 2
    assert main(args(data_dir, "--limit", "1")) == 0  # the project's own (unflagging) model
    assert "unlike" not in capsys.readouterr().out
    assert [p.unfamiliar for p in proposals(sessions, new[2])] == [False]
