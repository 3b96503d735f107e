"""The model in a process of its own (app/model_worker.py): it proposes what the in-process predictor
proposes, runs at a lower CPU priority, says so when it dies and starts again, and does not outlive the app."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app.model_worker import WORKER_NICE, WorkerProposer
from app.services import ModelProvider, UserError
from resi_core.predictor import MixedRequest, RequestError, SpacesRequest
from resi_core.segment import Segment
from tests.app.conftest import coco_photo

ROOT = Path(__file__).resolve().parents[2]


def photo() -> np.ndarray:
    from formats.images import decode_image

    return decode_image(coco_photo().read_bytes())


def same_segments(a: list[Segment], b: list[Segment]) -> None:
    assert [(s.id, s.class_name, s.label_spaces, s.isthing, s.sources) for s in a] == \
           [(s.id, s.class_name, s.label_spaces, s.isthing, s.sources) for s in b]
    for x, y in zip(a, b, strict=True):
        assert x.mask.dtype == np.bool_ and x.mask.shape == y.mask.shape
        assert np.array_equal(x.mask, y.mask), x.id
        assert x.score == pytest.approx(y.score, abs=1e-6)


def test_the_process_proposes_what_the_app_process_would(tiny_checkpoint: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()  # the same pool size on both sides, so the same arithmetic
    here = ModelProvider(tiny_checkpoint, "minilm", "cpu", tmp_path / "cache", threads=threads).predictor()
    there = ModelProvider(tiny_checkpoint, "minilm", "cpu", tmp_path / "cache", threads=threads, process=True)
    remote = there.predictor()
    try:
        assert isinstance(remote, WorkerProposer) and remote.label_spaces.keys() == here.label_spaces.keys()
        rgb = photo()
        for request in (SpacesRequest(("street", "portrait")), MixedRequest(("drive",), ("cat", "sofa"))):
            local = here.predict(rgb, request)
            far = remote.predict(rgb, request)
            same_segments(far.segments, local.segments)
            same_segments(far.instances, local.instances)
            assert far.domain_probs == pytest.approx(local.domain_probs, abs=1e-6)
            assert (far.out_of_domain, far.unfamiliar, far.notice) == \
                   (local.out_of_domain, local.unfamiliar, local.notice)
        assert remote.predict(rgb, SpacesRequest(("street",)), with_instances=False).instances == []
        with pytest.raises(RequestError, match="nowhere"):  # the user's mistake arrives as the same error
            remote.predict(rgb, SpacesRequest(("nowhere",)))
        remote.clear_cache()
        assert os.getpriority(os.PRIO_PROCESS, remote.pid) == os.getpriority(os.PRIO_PROCESS, 0) + WORKER_NICE
    finally:
        there.close()
    assert remote.process.poll() == 0  # closed: it exited by itself


def test_a_killed_process_is_one_message_and_the_next_proposal_starts_another(tiny_checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    provider = ModelProvider(tiny_checkpoint, "minilm", "cpu", tmp_path / "cache", threads=1, process=True)
    first = provider.predictor()
    try:
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(timeout=10)
        with pytest.raises(UserError, match="stopped while proposing.*propose again"):
            first.predict(photo(), SpacesRequest(("street",)))
        second = provider.predictor()
        assert second is not first and second.process.poll() is None
        assert isinstance(second.predict(photo(), SpacesRequest(("street",))).segments, list)
    finally:
        provider.close()


def test_a_broken_checkpoint_gives_the_load_message(tiny_checkpoint: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "meta.json").write_text((tiny_checkpoint / "meta.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    provider = ModelProvider(broken, "minilm", "cpu", tmp_path / "cache", process=True)
    with pytest.raises(UserError, match="Cannot load the model: .*everything else still works"):
        provider.predictor()
    assert not provider._predictors


def test_the_process_does_not_outlive_a_killed_app(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """The app is SIGKILLed (no clean-up runs): its model process sees the socket close and exits."""
    app = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from app.model_worker import WorkerProposer, WorkerSpec
        w = WorkerProposer.start(WorkerSpec({str(tiny_checkpoint)!r}, "minilm", "cpu", {str(tmp_path / "cache")!r},
                                            threads=1))
        print(w.pid, flush=True)
        time.sleep(600)
    """)], cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        pid = int(app.stdout.readline())
        os.kill(pid, 0)  # running
        app.kill()
        app.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid)
    finally:
        app.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False

