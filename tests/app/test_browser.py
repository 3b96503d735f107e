"""End to end in headless Chromium: create project → upload two photos → class set → propose → brush a mask
→ relabel → accept → PIQ on the quality page. Screenshots of each step go to test-output/browser/.

The app runs in this process with the fake model of conftest.py, so the test checks the UI, not the weights.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from app.config import AppConfig
from app.services import open_services
from tests.app.browser import CHROMIUM_ARGS, chromium_executable
from tests.app.conftest import FakeModel
from tests.shared_data import coco128_photos

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHOTS = Path(__file__).resolve().parents[2] / "test-output" / "browser"
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[str]:
    from app.ui import build_ui, launch_kwargs

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    config = AppConfig(data_dir=tmp_path / "data", port=free_port())
    svc = replace(open_services(config), model=FakeModel())
    demo = build_ui(svc)
    _, url, _ = demo.launch(**launch_kwargs(config), prevent_thread_lock=True, quiet=True)
    try:
        yield url
    finally:
        demo.close()


@pytest.fixture
def page(app_url: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    executable = chromium_executable()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(app_url)
        pg.wait_for_selector("#create-project-btn")
        try:
            yield pg
        finally:
            shot(pg, "last")  # where it ended, failed or not
            browser.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, text: str) -> None:
    """Choose the dropdown option that contains `text`."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id} [role=option]", has_text=text).first.click()


def wait_text(page, elem_id: str, text: str) -> None:
    page.locator(f"#{elem_id}").filter(has_text=text).wait_for()


def open_brush(page) -> None:
    """Open the Label tab's brush panel (closed, its picture is not kept up to date)."""
    if not page.locator("#editor").is_visible():
        page.locator("#brush-panel").get_by_text("Brush:").first.click()
    page.locator("#editor").wait_for()


def draw_stroke(page, elem_id: str) -> None:
    """Drag the brush across the middle of the editor canvas, after the width-race workaround."""
    open_brush(page)
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"] + 1, "height": size["height"]})
    page.set_viewport_size(size)
    page.wait_for_timeout(500)
    page.locator(f"#{elem_id} button[aria-label='Brush']").click()
    page.wait_for_selector(f"#{elem_id} button[aria-label='Brush'].highlight")
    canvas = page.locator(f"#{elem_id} .pixi-target canvas").first
    box = canvas.bounding_box()
    x0, y = box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5
    page.mouse.move(x0, y)
    page.mouse.down()
    page.mouse.move(x0 + box["width"] * 0.4, y, steps=3)
    page.mouse.up()


def click_picture(page, fx: float, fy: float) -> None:
    """Click the Label tab's picture at a fraction of its width and height, once the picture on show has
    loaded (a selection sends a new one; a click while it loads can land on nothing)."""
    page.wait_for_function("() => { const i = document.querySelector('#overview img');"
                           " return i !== null && i.complete && i.naturalWidth > 0; }")
    page.wait_for_timeout(200)  # painted
    box = page.locator("#overview img").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def brush_and_apply(page, expected: str, attempts: int = 3) -> None:
    """Paint a stroke and add it to the mask. On a busy machine the editor may not have taken the stroke yet
    (the app then says to paint first); paint again, as a user would, up to `attempts` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(attempts):
        draw_stroke(page, "editor")
        page.click("#add-brush-btn")
        try:
            page.locator("#edit-message").filter(has_text=expected).wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            if attempt == attempts - 1:
                raise
            page.wait_for_timeout(1500)


def test_label_two_photos_end_to_end(page) -> None:
    photos = coco128_photos(2)

    page.locator("#project-name textarea, #project-name input").first.fill("browser test")
    page.click("#create-project-btn")
    wait_text(page, "project-summary", "browser test")
    shot(page, "1-project")

    page.locator("#upload input[type=file]").set_input_files([str(p) for p in photos])
    page.wait_for_timeout(1000)
    page.click("#upload-btn")
    wait_text(page, "upload-report", "Added 2 image(s)")
    wait_text(page, "project-summary", "2 images")
    thumbnails = page.eval_on_selector_all("#images-table img", "imgs => imgs.map(i => i.src)")
    assert len({t for t in thumbnails if t.startswith("data:image/jpeg")}) == 2  # a thumbnail per image
    shot(page, "2-upload")

    page.get_by_role("tab", name="Class set").click()
    page.locator("#label-spaces label", has_text="street").click()
    page.locator("#label-spaces label", has_text="drive").click()
    page.click("#suggest-btn")
    page.locator("#synonyms label", has_text="person [street] ≈ pedestrian [drive]").click()
    page.click("#save-class-set-btn")
    wait_text(page, "class-set-summary", "synonyms: person = pedestrian")
    shot(page, "3-class-set")

    page.get_by_role("tab", name="Label").click()
    pick(page, "image-picker", photos[0].name)
    wait_text(page, "image-title", "new")
    page.click("#propose-btn")
    wait_text(page, "image-title", "4 segment(s)")
    shot(page, "4-proposed")

    # The fake model's person (street) and pedestrian (drive) overlap top-left; the pedestrian, a row
    # smaller, is on top. A click selects it; a second click on the same spot selects the person under it.
    click_picture(page, 0.25, 0.25)
    wait_text(page, "selected-segment", "pedestrian 1")
    click_picture(page, 0.25, 0.25)
    wait_text(page, "selected-segment", "person 1")
    page.wait_for_timeout(2500)  # the editor canvas needs a moment after its value changes
    brush_and_apply(page, "Mask of person 1 updated")
    shot(page, "5-brush")

    pick(page, "class-picker", "car [street]")
    page.click("#relabel-btn")
    wait_text(page, "edit-message", "Relabeled person 1 to car [street]")
    shot(page, "6-relabel")

    # Shortcuts act on the Label tab only: Delete on another tab leaves the selected segment alone.
    page.get_by_role("tab", name="Projects").click()
    page.keyboard.press("Delete")
    page.wait_for_timeout(1500)
    page.get_by_role("tab", name="Label").click()
    assert "4 segment(s)" in page.locator("#image-title").inner_text()
    page.locator("#image-title").click()  # focus off the pickers, so the keys reach the shortcuts
    page.keyboard.press("Delete")
    wait_text(page, "edit-message", "Deleted car")
    wait_text(page, "image-title", "3 segment(s)")
    page.keyboard.press("Control+z")
    wait_text(page, "image-title", "4 segment(s)")

    page.click("#accept-btn")
    wait_text(page, "edit-message", "PIQ of the proposal")
    shot(page, "7-accepted")

    page.get_by_role("tab", name="Quality").click()
    wait_text(page, "quality-summary", "Mean PIQ")
    page.locator("#piq-plot canvas, #piq-plot svg").first.wait_for()
    shot(page, "8-quality")

    # A click on a row of the Projects table opens that image on the Label tab.
    page.get_by_role("tab", name="Projects").click()
    wait_text(page, "images-table", "accepted")
    shot(page, "9-projects")
    page.locator("#images-table").get_by_text(photos[0].name).filter(visible=True).first.click()
    wait_text(page, "image-title", f"{photos[0].name}: accepted")
    # Deleting an image takes a second click; the image goes, with its labels.
    page.click("#skip-btn")  # to the second photo, the only one left to label
    wait_text(page, "edit-message", f"Skipped to {photos[1].name}")
    page.click("#delete-image-btn")
    page.click("#confirm-delete-image-btn")
    wait_text(page, "edit-message", "Deleted")
    shot(page, "10-deleted")
