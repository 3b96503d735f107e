"""Two labelers click about at random on one project, with the real demo checkpoint, in headless Chromium.

Set-up through the UI: create a project, upload generated M1 images (resi_core.world) and two coco128
photos when they are there, pick street + portrait and the typed class "cat", propose. Then N_ACTIONS
actions (RESI_RANDOM_ACTIONS, default 200) drawn by a seeded random generator (RESI_RANDOM_SEED,
default 0), each by one of two browser
contexts (two users' tabs on the same project): open an image, select by clicking the picture or a
table row, relabel to a trained and to the typed class, brush add and erase, new segment, delete,
merge, undo, redo, accept, skip, switch tabs, toggle label spaces.

It fails on any server traceback, any red error badge or error toast still there after the next
action that worked, any spinner turning longer than SPINNER_S, and any segment stored in the database
but not shown in the open image's table (when the tab shows the stored version). The actions and a
screenshot of each context go to test-output/random/.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.config import AppConfig
from app.services import open_services
from storage import repo
from tests.app.browser import CHROMIUM_ARGS, chromium_executable
from tests.shared_data import MISSING, coco128_photos

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "checkpoints" / "demo"
OUT = ROOT / "test-output" / "random"
N_ACTIONS = int(os.environ.get("RESI_RANDOM_ACTIONS", "200"))
SPINNER_S = 10.0
SEED = int(os.environ.get("RESI_RANDOM_SEED", "0"))
TYPED = "cat"
# Every tracker of gradio's that is not hidden is a spinner ("processing | 1.2s").
SPINNING = "() => [...document.querySelectorAll('[data-testid=status-tracker]')].some(w => !w.classList.contains('hide'))"
ERROR_BADGES = ("() => [...document.querySelectorAll('[data-testid=status-tracker].error, .toast-body.error')]"
                ".filter(e => e.offsetParent !== null).length")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tracebacks(logging.Handler):
    """Every log record of the server that carries an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or "Traceback" in record.getMessage():
            self.records.append(self.format(record))


@dataclass
class Served:
    url: str
    svc: Any
    tracebacks: Tracebacks


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    if not (DEMO / "model.safetensors").exists():
        pytest.skip(f"The demo checkpoint is not at {DEMO}.")
    from app.ui import build_ui, launch_kwargs

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    config = AppConfig(data_dir=tmp_path / "data", port=free_port(), checkpoint=DEMO, device="cpu")
    svc = open_services(config)
    svc.model.warm_up()  # as launch.py does, in the background: the first proposal does not load the model
    tracebacks = Tracebacks()
    logging.getLogger().addHandler(tracebacks)
    demo = build_ui(svc)
    _, url, _ = demo.launch(**launch_kwargs(config), prevent_thread_lock=True, quiet=True)
    try:
        yield Served(url, svc, tracebacks)
    finally:
        demo.close()
        logging.getLogger().removeHandler(tracebacks)


def upload_files(tmp_path: Path) -> list[Path]:
    from resi_core.world import make_sample

    files = []
    for index in range(4):
        path = tmp_path / f"m1-{index}.png"
        Image.fromarray(make_sample("M1", "val", index, seed=0, size=256).image).save(path)
        files.append(path)
    return files + (coco128_photos(2) if MISSING is None else [])


@dataclass
class Tab:
    """One user's browser tab, and what it did."""

    name: str
    page: Any
    log: list[str] = field(default_factory=list)


def settle(tab: Tab) -> None:
    """Wait until no spinner turns; a spinner that turns longer than SPINNER_S fails the test."""
    tab.page.wait_for_timeout(150)  # the event is on its way; its tracker starts within a frame or two
    start = time.monotonic()
    while tab.page.evaluate(SPINNING):
        if time.monotonic() - start > SPINNER_S:
            shoot(tab, "spinner")
            pytest.fail(f"{tab.name}: a spinner turned for more than {SPINNER_S:.0f} s after {tab.log[-1]!r}")
        tab.page.wait_for_timeout(100)
    tab.page.wait_for_timeout(100)  # the last update is painted


def shoot(tab: Tab, what: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(OUT / f"{tab.name}-{what}.png"), full_page=True)


def pick(page: Any, elem_id: str, rng: random.Random, text: str | None = None) -> str | None:
    """Open a dropdown and choose an option (containing `text`, else a random one); None when it has none."""
    page.locator(f"#{elem_id} input").click()
    options = page.locator(f"#{elem_id} [role=option]")
    if text is not None:
        options = options.filter(has_text=text)
    labels = [label.replace("✓", "").strip() for label in options.all_inner_texts()]
    if not labels:
        page.keyboard.press("Escape")
        return None
    choice = rng.randrange(len(labels))
    options.nth(choice).click()
    return labels[choice]


def stroke(page: Any, rng: random.Random) -> None:
    """A short brush stroke across the brush picture (few mouse moves: each is slow in software WebGL)."""
    if not page.locator("#editor").is_visible():  # the brush panel opens, and its picture is drawn
        page.locator("#brush-panel").get_by_text("Brush:").first.click()
        page.wait_for_timeout(1500)
    page.locator("#editor button[aria-label='Brush']").click()
    page.wait_for_selector("#editor button[aria-label='Brush'].highlight", timeout=5000)
    box = page.locator("#editor .pixi-target canvas").first.bounding_box()
    x, y = box["x"] + box["width"] * rng.uniform(0.2, 0.6), box["y"] + box["height"] * rng.uniform(0.2, 0.8)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.2, y + box["height"] * rng.uniform(-0.1, 0.1), steps=2)
    page.mouse.up()


def click_if_enabled(page: Any, elem_id: str) -> bool:
    button = page.locator(f"#{elem_id}")
    if not button.is_enabled():
        return False
    button.click()
    return True


def act(tab: Tab, rng: random.Random, classes: list[str]) -> str:
    """One random action of a labeler; returns what it was."""
    page = tab.page
    kind = rng.choices(
        ["open", "click", "row", "relabel", "typed", "add", "erase", "new", "delete", "merge", "undo", "redo",
         "accept", "skip", "tab", "toggle"],
        # Brush strokes are the slowest to drive (software WebGL), so they are drawn less often.
        weights=[8, 14, 6, 7, 5, 2, 2, 1, 5, 4, 6, 4, 4, 3, 4, 4])[0]
    if kind == "open":
        return f"open {pick(page, 'image-picker', rng)}"
    if kind == "click":
        img = page.locator("#overview img")
        if not img.count():
            return "click (no picture)"
        box = img.bounding_box()
        fx, fy = rng.random(), rng.random()
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        return f"click picture at ({fx:.2f}, {fy:.2f})"
    if kind == "row":
        cells = page.locator("#segments-table .cell-wrap").filter(visible=True)
        rows = cells.count() // 5
        if rows < 2:  # the header only
            return "row (none)"
        row = rng.randrange(1, rows)
        cells.nth(row * 5).click()
        return f"row {row}"
    if kind in ("relabel", "typed"):
        label = pick(page, "class-picker", rng, "[adhoc]" if kind == "typed" else rng.choice(classes))
        if label is None:  # the class set has every one of these
            shoot(tab, "classes")
            pytest.fail(f"{tab.name}: the class picker lost the class set's classes (after {tab.log[-2]!r})")
        page.click("#relabel-btn")
        return f"relabel to {label}"
    if kind in ("add", "erase", "new"):
        stroke(page, rng)
        button = {"add": "add-brush-btn", "erase": "erase-brush-btn", "new": "new-segment-btn"}[kind]
        page.click(f"#{button}")
        return f"brush {kind}"
    if kind == "merge":
        other = pick(page, "merge-picker", rng)
        page.click("#merge-btn")
        return f"merge with {other}"
    if kind in ("delete", "skip"):
        page.click(f"#{kind}-btn")
        return kind
    if kind in ("undo", "redo"):
        return kind if click_if_enabled(page, f"{kind}-btn") else f"{kind} (disabled)"
    if kind == "accept":
        page.click("#accept-btn")
        settle(tab)
        if page.locator("#accept-empty-btn").is_visible():
            page.click("#accept-empty-btn" if rng.random() < 0.5 else "#cancel-empty-btn")
            return "accept (empty: asked)"
        return "accept"
    if kind == "tab":
        other = rng.choice(["Projects", "Class set", "Quality", "Fine-tune"])
        page.get_by_role("tab", name=other).click()
        settle(tab)
        page.get_by_role("tab", name="Label").click()
        return f"tab {other} and back"
    boxes = page.locator("#space-toggles label")
    if not boxes.count():
        return "toggle (no spaces)"
    box = boxes.nth(rng.randrange(boxes.count()))
    name = box.inner_text()
    box.click()
    return f"toggle {name}"


def check_shown(tab: Tab, svc: Any) -> None:
    """Every segment stored for the open image is in the table, unless its label spaces are unticked or it
    is a proposal scoring under the threshold slider."""
    page = tab.page
    title = page.locator("#image-title").inner_text()
    options = page.locator("#image-picker input").input_value()
    if ":" not in options or "version " not in title:
        return
    image_id = int(options.split(":")[0])
    shown_version = int(title.split("version ")[1].split(",")[0].rstrip("."))
    with svc.sessions() as session:
        annotation = repo.current_annotation(session, image_id)
    if annotation.version != shown_version:
        return  # the other user changed it since: this tab shows the version it loaded, as it should
    toggles = page.evaluate("() => [...document.querySelectorAll('#space-toggles label')]"
                            ".map(l => [l.innerText.trim(), l.querySelector('input').checked])")
    unticked = {name for name, checked in toggles if not checked}
    # Proposals under "Hide proposals scoring below" are hidden on purpose (an unfamiliar photo's start so).
    threshold = float(page.locator("#min-score input[type=number]").input_value() or 0)
    expected = sorted((s.class_name, s.label_space) for s in annotation.segments
                      if set(s.label_space.split("+")) - unticked and (s.score is None or s.score >= threshold))
    cells = page.locator("#segments-table .cell-wrap").filter(visible=True).all_inner_texts()
    rows = [cells[i:i + 5] for i in range(5, len(cells), 5)]
    shown = sorted((row[1].strip(), row[2].strip()) for row in rows)
    missing = [seg for seg in expected if expected.count(seg) > shown.count(seg)]
    if missing:
        shoot(tab, "missing")
        pytest.fail(f"{tab.name}: stored but not shown after {tab.log[-1]!r}: {missing} (shown {shown})")


def set_up(page: Any, files: list[Path]) -> None:
    page.locator("#project-name textarea, #project-name input").first.fill("random")
    page.click("#create-project-btn")
    page.locator("#project-summary").filter(has_text="random").wait_for()
    page.locator("#upload input[type=file]").set_input_files([str(f) for f in files])
    page.wait_for_timeout(1000)
    page.click("#upload-btn")
    page.locator("#upload-report").filter(has_text=f"Added {len(files)} image(s)").wait_for()
    page.get_by_role("tab", name="Class set").click()
    page.locator("#label-spaces label", has_text="street").click()
    page.locator("#label-spaces label", has_text="portrait").click()
    page.locator("#adhoc-classes textarea, #adhoc-classes input").first.fill(TYPED)
    page.click("#save-class-set-btn")
    page.locator("#class-set-summary").filter(has_text=TYPED).wait_for()
    page.get_by_role("tab", name="Label").click()


def open_project(page: Any) -> None:
    page.locator("#project-picker input").click()
    page.locator("#project-picker [role=option]", has_text="random").first.click()
    page.click("#open-project-btn")
    page.locator("#project-summary").filter(has_text="random").wait_for()
    page.get_by_role("tab", name="Label").click()


def test_two_labelers_random_actions(served: Served, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from playwright.sync_api import sync_playwright

    rng = random.Random(SEED)
    files = upload_files(tmp_path)
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_executable(), args=CHROMIUM_ARGS)
        tabs = []
        for name in ("ann", "bob"):
            page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            page.set_default_timeout(30_000)
            page.goto(served.url)
            page.wait_for_selector("#create-project-btn")
            tabs.append(Tab(name, page))
        ann, bob = tabs
        set_up(ann.page, files)
        open_project(bob.page)
        for tab in tabs:  # each starts on an image, with its proposal
            pick(tab.page, "image-picker", rng, "m1-")
            settle(tab)
            tab.page.click("#propose-btn")
            tab.log.append("propose")
            settle(tab)
        classes = ["[street]", "[portrait]"]
        badge_since: dict[str, str] = {}
        try:
            for step in range(N_ACTIONS):
                tab = rng.choice(tabs)
                tab.log.append(f"{step}: pending")
                start = time.monotonic()
                tab.log[-1] = f"{step}: {act(tab, rng, classes)}"
                settle(tab)
                tab.log[-1] += f" ({time.monotonic() - start:.1f} s)"
                badges = tab.page.evaluate(ERROR_BADGES)
                if badges and tab.name in badge_since:
                    shoot(tab, "badge")
                    pytest.fail(f"{tab.name}: an error badge from {badge_since[tab.name]!r} is still there after "
                                f"{tab.log[-1]!r}")
                if badges:
                    badge_since[tab.name] = tab.log[-1]
                else:
                    badge_since.pop(tab.name, None)
                check_shown(tab, served.svc)
                printed = capfd.readouterr()
                assert "Traceback" not in printed.err + printed.out, (
                    f"server traceback after {tab.name}'s {tab.log[-1]!r}:\n{printed.err[-3000:]}")
                assert not served.tracebacks.records, (
                    f"server traceback after {tab.name}'s {tab.log[-1]!r}:\n{served.tracebacks.records[0]}")
        finally:
            for tab in tabs:
                shoot(tab, "end")
                (OUT / f"{tab.name}-actions.txt").write_text("\n".join(tab.log) + "\n", encoding="utf-8")
            browser.close()
    assert sum(len(t.log) for t in tabs) >= N_ACTIONS
