"""Felt latency of the Label tab, click to screen, in Chromium: `python scripts/bench_ui_latency.py`.

Serves the app with a real checkpoint (default checkpoints/demo) on a project of generated 512x512
images of benchmark M1 (street + portrait; `resi_core.world`), opens it in headless Chromium and times,
`--repeats` times each (median printed): propose, open an image, select a segment by clicking it on
the picture, and one edit (relabel). Each time runs in the page, from the click's pointerdown to the
first animation frame at which the result is on screen: the new picture loaded (or, for propose, the
status line at the new version) and the event's progress indicator gone. Figures are printed as JSON;
nothing here passes or fails. Needs Chromium (/usr/bin/chromium, or RESI_CHROMIUM) and playwright. The brush
panel stays closed, as it is until a labeler opens it; `--brush-open` times with it open (its WebGL picture
is redrawn after each selection and edit).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.class_sets.handlers import save_class_set  # noqa: E402
from app.config import DEFAULT_CHECKPOINT, AppConfig  # noqa: E402
from app.labeling.images import load_image  # noqa: E402
from app.labeling.propose import propose  # noqa: E402
from app.projects.handlers import create_project  # noqa: E402
from app.projects.upload import upload_images  # noqa: E402
from app.render import display_shape  # noqa: E402
from app.services import open_services  # noqa: E402

CHROMIUM = os.environ.get("RESI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SIZE = 512
# The page's clock starts at every pointerdown; a check below returns the milliseconds since then, or false.
HOOK = "() => document.addEventListener('pointerdown', () => { window.__t0 = performance.now(); }, true)"
IDLE = """(id) => [...document.querySelectorAll('#' + id + ' .wrap')].every(
    w => w.classList.contains('hide') || !w.className.includes('svelte'))"""
PICTURE_SHOWN = """([before, text]) => {
  const img = document.querySelector('#overview img');
  const line = document.querySelector('#selected-segment').innerText + document.querySelector('#edit-message').innerText;
  const ok = img && img.src !== before && img.complete && img.naturalWidth > 0 && line.includes(text);
  return ok ? performance.now() - window.__t0 : false;
}"""
TITLE_SHOWN = """([text]) => {
  const busy = [...document.querySelectorAll('#image-title .wrap')].some(w => !w.classList.contains('hide'));
  const img = document.querySelector('#overview img');
  const ok = !busy && document.querySelector('#image-title').innerText.includes(text) && img && img.complete;
  return ok ? performance.now() - window.__t0 : false;
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def world_images(folder: Path, n: int) -> list[Path]:
    from resi_core.world import make_sample

    paths = []
    for index in range(n):
        path = folder / f"m1-{index}.png"
        Image.fromarray(make_sample("M1", "val", index, seed=0, size=SIZE).image).save(path)
        paths.append(path)
    return paths


def segment_points(svc: Any, state: Any) -> list[tuple[tuple[int, int], str]]:
    """A point inside each segment (display grid), with the segment's short name, for clicks."""
    from app.labeling.images import visible_segments
    from app.render import segments_at
    from app.segments import short_names

    state, view = load_image(svc, state)
    display = display_shape(view.image.shape)
    names = short_names(view.segments)
    points = []
    for seg in visible_segments(view.segments, state):
        rows, cols = np.nonzero(seg.mask)
        k = len(rows) // 2
        point = (int(cols[k] * display[1] / seg.mask.shape[1]), int(rows[k] * display[0] / seg.mask.shape[0]))
        if segments_at(view.segments, point, display)[:1] == [seg.id]:  # the topmost there
            points.append((point, names[seg.id]))
    return points


def timed(page: Any, action: Callable[[], None], check: str, arg: Any) -> float:
    action()
    return float(page.wait_for_function(check, arg=arg, polling="raf", timeout=60_000).json_value()) / 1000


def run(checkpoint: Path, repeats: int, screenshot: Path | None = None, brush_open: bool = False) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    from app.ui import build_ui, launch_kwargs

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        config = AppConfig(data_dir=tmp / "data", checkpoint=checkpoint, port=free_port())
        svc = open_services(config)
        state = create_project(svc, "bench")
        report = upload_images(svc, state, world_images(tmp, 2))
        save_class_set(svc, state, ["street", "portrait"], "", [])
        first = replace(state, image_id=report.first_image_id)
        points = segment_points(svc, propose(svc, first, "bench").state)
        if len(points) < 2:
            raise SystemExit(f"The checkpoint proposed {len(points)} selectable segment(s); 2 are needed to time clicks.")
        demo = build_ui(svc)
        _, url, _ = demo.launch(**launch_kwargs(config), prevent_thread_lock=True, quiet=True)
        times: dict[str, list[float]] = {"select": [], "edit": [], "open": [], "propose": []}
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(url)
                page.wait_for_selector("#open-project-btn")
                page.evaluate(HOOK)
                page.locator("#project-picker input").click()
                page.locator("#project-picker [role=option]", has_text="bench").first.click()
                page.click("#open-project-btn")
                page.locator("#project-summary").filter(has_text="bench").wait_for()
                page.get_by_role("tab", name="Label").click()
                names = ["m1-0.png", "m1-1.png"]

                def pick_image(name: str) -> None:
                    page.locator("#image-picker input").click()
                    page.locator("#image-picker [role=option]", has_text=name).first.click()

                pick_image(names[0])
                page.locator("#image-title").filter(has_text=names[0]).wait_for()
                if brush_open:
                    page.locator("#brush-panel").get_by_text("Brush:").first.click()
                    page.locator("#editor").wait_for()
                time.sleep(1)
                box = page.locator("#overview img").bounding_box()
                img_size = page.evaluate("() => [document.querySelector('#overview img').naturalWidth,"
                                         " document.querySelector('#overview img').naturalHeight]")
                for i in range(repeats):
                    (x, y), name = points[i % len(points)]
                    before = page.evaluate("() => document.querySelector('#overview img').src")
                    times["select"].append(timed(page, lambda x=x, y=y: page.mouse.click(
                        box["x"] + (x + 0.5) * box["width"] / img_size[0],
                        box["y"] + (y + 0.5) * box["height"] / img_size[1]), PICTURE_SHOWN, [before, name]))
                last = points[(repeats - 1) % len(points)][1].rsplit(" ", 1)[0]
                classes = ["car [street]", "face [portrait]"] if last != "car" else ["face [portrait]", "car [street]"]
                for i in range(repeats):
                    page.locator("#class-picker input").click()
                    page.locator("#class-picker [role=option]", has_text=classes[i % 2]).first.click()
                    before = page.evaluate("() => document.querySelector('#overview img').src")
                    times["edit"].append(timed(page, lambda: page.click("#relabel-btn"), PICTURE_SHOWN,
                                               [before, f"to {classes[i % 2]}"]))
                for i in range(repeats):
                    name = names[(i + 1) % 2]
                    times["open"].append(timed(page, lambda name=name: pick_image(name), TITLE_SHOWN, [name]))
                if repeats % 2:
                    pick_image(names[0])
                page.locator("#image-title").filter(has_text=names[0]).wait_for()
                for _ in range(repeats):
                    version = int(page.locator("#image-title").inner_text().split("version ")[1].split(",")[0])
                    times["propose"].append(timed(page, lambda: page.click("#propose-btn"), TITLE_SHOWN,
                                                  [f"version {version + 1},"]))
                if screenshot is not None:
                    page.screenshot(path=str(screenshot), full_page=True)
                browser.close()
        finally:
            demo.close()
    return {k: {"median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3), "n": len(v)}
            for k, v in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint folder (default: the demo)")
    parser.add_argument("--repeats", type=int, default=50, help="times each action is timed (default 50)")
    parser.add_argument("--screenshot", type=Path, default=None, help="save the page at the end as this PNG")
    parser.add_argument("--brush-open", action="store_true", help="time with the brush panel open")
    args = parser.parse_args(argv)
    if not args.checkpoint.exists():
        print(f"error: no checkpoint at {args.checkpoint}; pass --checkpoint.", file=sys.stderr)
        return 2
    if not Path(CHROMIUM).exists():
        print(f"error: Chromium is not installed at {CHROMIUM} (apt-get install chromium).", file=sys.stderr)
        return 2
    targets = {"select": 0.3, "edit": 0.5, "open": 0.5, "propose": 1.0}
    results = run(args.checkpoint, args.repeats, args.screenshot, args.brush_open)
    for key, target in targets.items():
        results[key]["target_s"] = target
    print(json.dumps({"image": f"{SIZE}x{SIZE}", "brush_panel": "open" if args.brush_open else "closed",
                      "load_average": os.getloadavg(), **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
