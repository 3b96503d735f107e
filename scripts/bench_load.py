"""Many annotators at once: save latency through the real HTTP path, with proposals running beside.

    .venv/bin/python scripts/bench_load.py                      # 20 users, 60 s, 1 s between a user's saves
    .venv/bin/python scripts/bench_load.py --think 0 --seconds 30   # back-to-back saves: the saturation point

`python launch.py` runs in a subprocess on a fresh data folder holding one project with --users
coco128 photos (640x480-ish, --segments segments each). Each simulated user is a gradio_client session,
as a browser tab is: it opens the project and its own photo, selects a segment, then relabels it (a
saved correction) over and over for --seconds, waiting --think seconds between saves (the users' first saves
are spread over the first --think seconds, as a team's are, not sent all at once). Meanwhile
--proposers more sessions press Propose (the demo checkpoint) on other photos, back to back: proposals
queue on the model, saves must not queue behind them. Prints, as JSON: save latency median / p90 / p99 /
max, saves per second, errors, and lost writes: after the run, every image must hold exactly its user's
acknowledged saves (relabel events) and the label of the last one. Also the load average, since the
clients share the machine with the server.

What is measured: a save's latency is the time a client waits from sending it to its acknowledgement,
so it includes the client's own work (gradio_client: HTTP, the event stream, JSON), and the clients run
in this process on the same CPUs as the server. `save_in_app_s` is the app's side alone (gradio's
profiling traces: the wait in its queue plus the event's processing). `client_cpu_s` (this process) against
`server_cpu_s` (the app's process) says who used the machine; `server_cpu_s_per_request` divides the
server's by saves + proposals (`server_cpu_s_per_save` is the same figure, kept under its old name; with
--proposers it includes the model's work). The clients share one TLS context (tests/live_app.py): built per
request, as gradio_client does by default, it cost them more CPU than the server used per save.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.live_app import CLASSES, SEGMENT_ID, Editor, live_app, seed_project  # noqa: E402
from tests.shared_data import COCO128_IMAGES, MISSING  # noqa: E402


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The running child processes of `pid` (the app's model process)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def app_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the app's process and of its children (its model process)."""
    return process_cpu_seconds(pid), sum(process_cpu_seconds(c) for c in children(pid))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def server_timings(url: str, since: float) -> dict[str, float | None]:
    """The saves' time inside the app, from gradio's profiling traces of the saves that started after `since`
    (wall clock): medians of the queue wait, our handler and gradio's postprocessing; median and p99 of
    queue wait + processing."""
    with urllib.request.urlopen(f"{url}gradio_api/profiling/traces") as response:
        traces = [t for t in json.load(response) if t["fn_name"] == "relabel" and t["timestamp"] >= since]
    def median(key: str) -> float | None:
        values = [t[key] / 1000 for t in traces]
        return round(statistics.median(values), 3) if values else None

    totals = [(t["queue_wait_ms"] + t["total_ms"]) / 1000 for t in traces]
    return {"queue_wait_median": median("queue_wait_ms"), "handler_median": median("fn_call_ms"),
            "postprocess_median": median("postprocess_ms"),
            "median": round(statistics.median(totals), 3) if totals else None,
            "p99": round(percentile(totals, 0.99), 3),
            # When the slowest ones started (seconds into the run): a stall at the start, or spread out?
            "slowest_started_at_s": sorted(round(t["timestamp"] - since, 1) for t in
                                           sorted(traces, key=lambda t: -t["queue_wait_ms"] - t["total_ms"])[:5])}


def run(args: argparse.Namespace, data: Path) -> dict[str, object]:
    photos = sorted(COCO128_IMAGES.glob("*.jpg"))
    needed = args.users + args.proposers
    if len(photos) < needed:
        raise SystemExit(MISSING or f"need {needed} photos under {COCO128_IMAGES}")
    ids = seed_project(data, needed, photos=photos[:needed], segments=args.segments)
    user_images, propose_images = ids[: args.users], ids[args.users:]
    checkpoint = Path(args.checkpoint).resolve() if args.proposers else None
    latencies: list[float] = []
    errors: list[str] = []
    acknowledged: dict[int, list[str]] = {image_id: [] for image_id in user_images}
    proposals: list[float] = []
    lock = threading.Lock()
    # Gradio's own per-request timings (GRADIO_PROFILING): how long a save waited in the app's queue and
    # ran, without the HTTP round trip and the client's work.
    extra = ("--model-threads", str(args.model_threads)) if args.model_threads else ()
    extra += () if args.model_process else ("--no-model-process",)
    with live_app(data, *extra, checkpoint=checkpoint, env={"GRADIO_PROFILING": "1"}) as app:
        editors = []
        for image_id in user_images:  # sessions are opened before the clock starts, as tabs already open
            editors.append(Editor(app.url, "live", image_id))
        proposers = []
        for image_id in propose_images:
            client = Editor(app.url, "live", image_id).client
            # One proposal before the clock: a running app has its model and text encoder loaded already
            # (the first proposal loads them, which held up every save for about a second).
            client.predict(api_name="/propose")
            proposers.append(client)
        start_line = threading.Barrier(len(editors) + len(proposers) + 1)
        stop = threading.Event()

        def save_loop(editor: Editor) -> None:
            start_line.wait()
            # Users are not in step: each starts within the first think time (seeded, so runs compare), not all
            # at the same instant (a burst no real team makes, which set the p99 on its own).
            stop.wait(random.Random(editor.image_id).uniform(0, args.think))
            while not stop.is_set():
                label = f"{CLASSES[(editor.saves + 1) % 2]}"
                began = time.perf_counter()
                try:
                    editor.save()
                except Exception as exc:  # noqa: BLE001 - counted as an error, the user goes on
                    with lock:
                        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                    continue
                elapsed = time.perf_counter() - began
                with lock:
                    latencies.append(elapsed)
                    acknowledged[editor.image_id].append(label)
                stop.wait(args.think)

        def propose_loop(client: object) -> None:
            start_line.wait()
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    client.predict(api_name="/propose")  # type: ignore[attr-defined]
                except Exception as exc:  # noqa: BLE001
                    with lock:
                        errors.append(f"propose: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                with lock:
                    proposals.append(time.perf_counter() - began)

        threads = [threading.Thread(target=save_loop, args=(e,)) for e in editors]
        threads += [threading.Thread(target=propose_loop, args=(c,)) for c in proposers]
        for t in threads:
            t.start()
        load_before = os.getloadavg()
        start_line.wait()
        began, began_wall = time.perf_counter(), time.time()
        (server_cpu, model_cpu), client_cpu = app_cpu_seconds(app.process.pid), time.process_time()
        stop.wait(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        duration = time.perf_counter() - began
        server_now, model_now = app_cpu_seconds(app.process.pid)
        server_cpu, model_cpu = server_now - server_cpu, model_now - model_cpu
        app_cpu = server_cpu
        server_cpu += model_cpu  # the server: the app's process and its model process
        client_cpu = time.process_time() - client_cpu
        load_after = os.getloadavg()
        in_app = server_timings(app.url, began_wall)
    lost = []
    with sqlite3.connect(data / "resi.db") as conn:
        for image_id, labels in acknowledged.items():
            events = conn.execute("SELECT count(*) FROM annotation_events WHERE image_id = ? AND event_type = "
                                  "'relabel'", (image_id,)).fetchone()[0]
            current = conn.execute("SELECT class_name FROM annotation_segments WHERE image_id = ? AND uid = ?",
                                   (image_id, SEGMENT_ID)).fetchone()
            if events < len(labels) or (labels and (current is None or current[0] != labels[-1])):
                lost.append({"image": image_id, "acknowledged": len(labels), "stored": events,
                             "last_label": labels[-1] if labels else None, "stored_label": current and current[0]})
    return {
        "users": args.users, "proposers": args.proposers, "model_threads": args.model_threads, "model_process": args.model_process, "seconds": round(duration, 1), "think_s": args.think,
        "segments_per_image": args.segments,
        "saves": len(latencies),
        "saves_per_s": round(len(latencies) / duration, 2),
        "save_latency_s": {"median": round(statistics.median(latencies), 3) if latencies else None,
                           "p90": round(percentile(latencies, 0.90), 3), "p99": round(percentile(latencies, 0.99), 3),
                           "max": round(max(latencies), 3) if latencies else None},
        "save_in_app_s": in_app,
        "proposals": len(proposals),
        "propose_latency_s_median": round(statistics.median(proposals), 3) if proposals else None,
        "app_process_cpu_s": round(app_cpu, 1),
        "model_process_cpu_s": round(model_cpu, 1),  # 0 with --no-model-process: the model's is in the app's
        "server_cpu_s_per_request": round(server_cpu / max(1, len(latencies) + len(proposals)), 4),
        "server_cpu_s_per_save": round(server_cpu / max(1, len(latencies) + len(proposals)), 4),
        "server_cpu_share_of_the_machine": round(server_cpu / duration / (os.cpu_count() or 1), 2),
        "client_cpu_s": round(client_cpu, 1),
        "client_cpu_s_per_request": round(client_cpu / max(1, len(latencies) + len(proposals)), 4),
        "errors": len(errors), "error_examples": errors[:5],
        "lost_writes": len(lost), "lost_examples": lost[:5],
        "cpus": os.cpu_count(),
        "load_average_during": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--think", type=float, default=1.0, help="seconds a user waits between saves (default 1)")
    parser.add_argument("--segments", type=int, default=5, help="segments per photo (default 5)")
    parser.add_argument("--proposers", type=int, default=2, help="sessions pressing Propose meanwhile (default 2)")
    parser.add_argument("--checkpoint", default="checkpoints/demo", help="model for the proposers")
    parser.add_argument("--model-threads", type=int, help="the app's --model-threads (default: the app's default)")
    parser.add_argument("--model-process", action=argparse.BooleanOptionalAction, default=True,
                        help="the app's --model-process (default: on, as the app's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="resi-load-") as tmp:
        print(json.dumps(run(args, Path(tmp) / "data"), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
