"""A real browser (Debian's chromium driven by Playwright) opens the "Compare & learn" tab with the shipped models,
runs its four panels on an example view, presses Play on the three globes and on the probability path, checks that
no error appeared, and takes a screenshot of each panel.

Set GEODEMO_CLASSROOM_SHOTS to a folder to keep the panels' screenshots, GEODEMO_SCREENSHOT_CLASSROOM to a path to
keep the whole tab (assets/screenshot-classroom.png is made this way). Without them the panels run with fewer
samples and steps (the same code, less CPU).
"""

import os
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

import app
from app_fixtures import launch_app
from geodemo.registry import shipped_models

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
KEEP_PANELS = os.environ.get("GEODEMO_CLASSROOM_SHOTS")
KEEP_TAB = os.environ.get("GEODEMO_SCREENSHOT_CLASSROOM")
FULL = bool(KEEP_PANELS or KEEP_TAB)

if not Path(CHROMIUM).is_file():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
if not {"default", "earth-flow", "earth-diffusion"} <= set(shipped_models()):
    pytest.skip("the shipped models are not on disk", allow_module_level=True)

FRAMES = "(id) => { const g = document.querySelector('#' + id + ' .geodemo-globe');" \
         " return g && g._transitionData && g._transitionData._frames ? g._transitionData._frames.length : 0; }"
DONE = "(id) => { const el = document.querySelector('#' + id); return el && el.innerText.length > 0" \
       " && !el.innerText.includes('…') && document.querySelectorAll('.progress-text, .eta-bar').length === 0; }"
PLAYED = "(id) => { const s = document.querySelector('#' + id + ' .geodemo-globe').layout.sliders[0];" \
         " return s.active === s.steps.length - 1; }"


@pytest.fixture(scope="module")
def url():
    grid = {} if FULL else {"coarse_deg": 30.0, "levels": 2, "max_cells_per_level": 12}
    url, demo = launch_app(None, map_options=grid)
    yield url
    demo.close()


def fill(page, elem_id: str, value) -> None:
    """Type a value into a textbox or a slider's number box."""
    box = page.locator(f"#{elem_id} input[type=number], #{elem_id} textarea, #{elem_id} input[type=text]").first
    box.fill(str(value))
    box.press("Enter")


def play(page, globe_id: str) -> None:
    """Press the globe's Play button and wait until the animation has reached its last frame."""
    page.locator(f"#{globe_id} .geodemo-globe .updatemenu-button").first.click()
    page.wait_for_function(PLAYED, arg=globe_id, timeout=120_000)


@pytest.mark.slow
def test_classroom_tab_runs_every_panel_in_a_browser(url, tmp_path):
    examples, _ = app.example_images()
    image = next(e for e in examples if "nile" in e)
    shots = Path(KEEP_PANELS) if KEEP_PANELS else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1200})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.get_by_role("tab", name="Compare & learn").click()
        page.locator("#classroom-image input[type=file]").set_input_files(image)
        page.wait_for_selector("#classroom-image img", timeout=30_000)
        if not FULL:
            fill(page, "compare-samples", 32)
            fill(page, "guidance-samples", 32)
            fill(page, "guidance-list", "0, 1, 4")
            fill(page, "steps-list", "1, 8, 64")
            fill(page, "path-samples", 64)

        page.get_by_role("button", name="Compare the processes").click()
        page.wait_for_function(f"(id) => ({FRAMES})(id) > 1", arg="compare-globes", timeout=120_000)
        page.wait_for_function("() => document.querySelector('#compare-summary').innerText.includes('nats/sr')"
                               " && !document.querySelector('#compare-summary').innerText.includes('computing')",
                               timeout=180_000)
        scenes = page.evaluate("() => Object.keys(document.querySelector('#compare-globes .geodemo-globe').layout)"
                               ".filter(k => k.startsWith('scene')).length")
        assert scenes == 3
        play(page, "compare-globes")  # one Play moves the three globes
        page.wait_for_timeout(1500)
        page.locator("#panel-compare").screenshot(path=str(shots / "1-compare.png"))

        page.get_by_role("button", name="Sweep the guidance").click()
        page.wait_for_selector("#guidance-maps img", timeout=120_000)
        page.wait_for_function(DONE, arg="guidance-summary", timeout=240_000)
        page.locator("#panel-guidance").screenshot(path=str(shots / "2-guidance.png"))

        page.get_by_role("button", name="Sweep the steps").click()
        page.wait_for_selector("#steps-curves img", timeout=120_000)
        page.wait_for_function(DONE, arg="steps-summary", timeout=240_000)
        page.locator("#panel-steps").screenshot(path=str(shots / "3-steps.png"))

        page.get_by_role("button", name="Show the path").click()
        page.wait_for_function(f"(id) => ({FRAMES})(id) === 5", arg="path-globe", timeout=120_000)
        page.wait_for_function(DONE, arg="path-summary", timeout=300_000)
        play(page, "path-globe")
        page.wait_for_timeout(1500)
        page.locator("#panel-path").screenshot(path=str(shots / "4-path.png"))

        assert page.locator(".toast-body.error").count() == 0
        assert "Exact" in page.locator("#path-summary").inner_text()
        if KEEP_TAB:
            page.screenshot(path=str(tmp_path / "tab.png"), full_page=True)
        browser.close()
    for name in ("1-compare", "2-guidance", "3-steps", "4-path"):
        assert (shots / f"{name}.png").stat().st_size > 30_000, name
    assert not errors, errors
    if KEEP_TAB:
        shutil.copyfile(tmp_path / "tab.png", KEEP_TAB)
