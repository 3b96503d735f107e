"""The model in a process of its own: `WorkerProposer` is a predictor (`app.services.Proposer`) whose
model runs in a child process, `python -m app.model_worker`, at a lower CPU priority.

Why: a proposal's Python (ESF-OMI, the decoder's bookkeeping) needs the interpreter lock that every save
of every user needs too, and its torch threads take the same cores. In a child process the model holds
no lock of the app's, and at `WORKER_NICE` the operating system gives the app's saves the CPU first:
proposals may queue on the model, saves do not queue behind them (docs/APP.md, 20 users at once).

The child loads the checkpoint and its own text encoder, answers `predict` and `clear_cache` one at a
time, and exits when the app closes its end of the socket (or dies: the socket closes with it). If the
child dies (killed, out of memory), the call that was waiting gets a `UserError` saying so, and the next
proposal starts a new child (`ModelProvider.predictor`). Requests and predictions cross as pickles over a
socket pair; masks travel bit-packed (an eighth of a bool array).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from resi_core.labels import LabelSpace
    from resi_core.predictor import Request
    from resi_core.segment import Segment

log = logging.getLogger(__name__)

# The child's niceness, added to the app's: a proposal gets the CPU the saves leave (Linux: 10 of 19).
WORKER_NICE = 10
# How long a child may take to import torch and load the checkpoint and the text encoder.
START_TIMEOUT_S = 600.0


class WorkerError(RuntimeError):
    """The model's process failed to start, or failed on a request in a way that is not the user's."""


@dataclass(frozen=True)
class WorkerSpec:
    """What the child needs to build the same predictor `ModelProvider` would build in-process."""

    checkpoint: str
    text_encoder: str
    device: str
    cache_dir: str
    out_of_domain_threshold: float | None = None
    threads: int | None = None
    nice: int = WORKER_NICE


@dataclass(frozen=True)
class WorkerPrediction:
    """What crosses back of a `resi_core.predictor.Prediction`: the fields the app reads
    (`app.services.Proposal`), the AP list when asked for, and the stage timings."""

    segments: list[Segment]
    instances: list[Segment] = field(default_factory=list)
    domain_probs: dict[str, float] = field(default_factory=dict)
    out_of_domain: tuple[str, ...] = ()
    unfamiliar: bool = False
    notice: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _pack(segments: Sequence[Segment]) -> list[tuple[dict[str, Any], np.ndarray, tuple[int, int]]]:
    out = []
    for seg in segments:
        fields = {f.name: getattr(seg, f.name) for f in dataclasses.fields(seg) if f.name != "mask"}
        out.append((fields, np.packbits(seg.mask, axis=None), seg.mask.shape))
    return out


def _unpack(packed: Sequence[tuple[dict[str, Any], np.ndarray, tuple[int, int]]]) -> list[Segment]:
    from resi_core.segment import Segment

    segments = []
    for fields, bits, (h, w) in packed:
        mask = np.unpackbits(bits, count=h * w).reshape(h, w).view(bool)
        segments.append(Segment(mask=mask, **fields))
    return segments


class WorkerProposer:
    """A predictor whose model runs in a child process. Thread-safe: calls take turns on one lock."""

    def __init__(self, spec: WorkerSpec, process: subprocess.Popen[bytes], conn: Connection,
                 label_spaces: dict[str, LabelSpace]):
        self.spec = spec
        self.process = process
        self._conn = conn
        self._label_spaces = label_spaces
        self._lock = threading.Lock()
        self.stopped = False

    @classmethod
    def start(cls, spec: WorkerSpec, timeout: float = START_TIMEOUT_S) -> WorkerProposer:
        """Start a child and wait until its model is loaded. A checkpoint it cannot load raises
        `WorkerError` with the child's own message."""
        parent, child = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "app.model_worker", "--fd", str(child.fileno()),
                 "--spec", json.dumps(dataclasses.asdict(spec))],
                pass_fds=(child.fileno(),), cwd=os.getcwd(), env=_child_env(),
            )
        finally:
            child.close()
        conn = Connection(parent.detach())
        deadline = time.monotonic() + timeout
        try:
            while not conn.poll(0.2):
                if process.poll() is not None:
                    raise WorkerError(f"the model's process exited while loading (exit code {process.returncode}; "
                                      "its error is in the app's log)")
                if time.monotonic() > deadline:
                    raise WorkerError(f"the model's process did not load the model within {timeout:.0f} s")
            kind, payload = conn.recv()
        except (EOFError, OSError) as exc:
            _stop(process, conn)
            raise WorkerError(f"the model's process stopped while loading (exit code {process.poll()})") from exc
        except WorkerError:
            _stop(process, conn)
            raise
        if kind != "ready":
            _stop(process, conn)
            raise WorkerError(str(payload))
        return cls(spec, process, conn, payload)

    @property
    def label_spaces(self) -> dict[str, LabelSpace]:
        return dict(self._label_spaces)

    @property
    def pid(self) -> int:
        return self.process.pid

    def predict(self, image: np.ndarray, request: Request, *, with_instances: bool = True) -> WorkerPrediction:
        reply = self._call(("predict", np.ascontiguousarray(image), request, with_instances))
        segments, instances, rest = reply
        return WorkerPrediction(_unpack(segments), _unpack(instances), **rest)

    def clear_cache(self) -> None:
        self._call(("clear_cache",))

    def close(self) -> None:
        """Stop the child once the call in flight (if any) is answered."""
        with self._lock:
            self.stopped = True
            _stop(self.process, self._conn)

    def _call(self, message: tuple[Any, ...]) -> Any:
        from app.services import UserError
        from resi_core.predictor import RequestError

        with self._lock:
            if self.stopped:
                raise UserError("The model's process was stopped. Propose again to start it.")
            try:
                self._conn.send(message)
                kind, payload = self._conn.recv()
            except (EOFError, OSError):
                self.stopped = True
                try:
                    code: int | None = self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:  # its socket broke but it still runs: stop it
                    self.process.kill()
                    code = self.process.wait()
                why = " (killed: out of memory?)" if code in (-9, 137) else ""
                raise UserError(f"The model's process stopped while proposing (exit code {code}{why}). Nothing "
                                "you saved is lost; propose again to restart it.") from None
        if kind == "ok":
            return payload
        if kind == "request_error":
            raise RequestError(payload)
        text, trace = payload
        log.error("the model's process failed: %s\n%s", text, trace)
        raise WorkerError(f"the model's process failed: {text}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The child must import this checkout's packages, whatever the app's working folder is.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _stop(process: subprocess.Popen[bytes], conn: Connection) -> None:
    conn.close()  # the child's recv ends, and it exits
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# --- the child ------------------------------------------------------------------------------------


def _load(spec: WorkerSpec) -> Any:
    """The predictor `ModelProvider.predictor` builds in-process, from the same pieces."""
    import torch

    from app.services import torch_device
    from resi_core.model import load_checkpoint
    from resi_core.predictor import Predictor
    from resi_core.text import get_text_encoder

    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    encoder = get_text_encoder(spec.text_encoder, cache_dir=Path(spec.cache_dir))
    model = load_checkpoint(Path(spec.checkpoint), text_encoder_id=encoder.id)
    return Predictor(model, encoder, device=torch_device(spec.device),
                     out_of_domain_threshold=spec.out_of_domain_threshold)


def _answer(predictor: Any, message: tuple[Any, ...]) -> tuple[str, Any]:
    from resi_core.predictor import RequestError

    try:
        if message[0] == "clear_cache":
            predictor.clear_cache()
            return "ok", None
        _, image, request, with_instances = message
        p = predictor.predict(image, request, with_instances=with_instances)
        rest = {"domain_probs": p.domain_probs, "out_of_domain": p.out_of_domain, "unfamiliar": p.unfamiliar,
                "notice": p.notice, "timings": p.timings}
        return "ok", (_pack(p.segments), _pack(p.instances if with_instances else []), rest)
    except RequestError as exc:
        return "request_error", str(exc)
    except Exception as exc:  # sent to the app, which logs it; the child goes on serving
        return "error", (f"{type(exc).__name__}: {exc}", traceback.format_exc())


def serve(conn: Connection, spec: WorkerSpec) -> None:
    try:
        predictor = _load(spec)
    except Exception as exc:  # the message goes to the app, which shows it (CheckpointError, TextEncoderError, ...)
        conn.send(("load_error", str(exc).rstrip(".")))
        return
    if spec.nice:  # after loading, which is not the saves' competition and may take seconds
        os.nice(spec.nice)
    conn.send(("ready", predictor.label_spaces))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the app closed its end, or died
            return
        conn.send(_answer(predictor, message))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.model_worker",
                                     description="The app's model process (started by the app, not by hand).")
    parser.add_argument("--fd", type=int, required=True, help="the socket inherited from the app")
    parser.add_argument("--spec", required=True, help="WorkerSpec as JSON")
    args = parser.parse_args(argv)
    spec = WorkerSpec(**json.loads(args.spec))
    with Connection(args.fd) as conn:
        serve(conn, spec)
    os._exit(0)  # nothing to flush, and tearing torch down takes a busy machine's CPU for seconds


if __name__ == "__main__":
    main()
