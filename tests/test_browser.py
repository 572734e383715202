"""A real browser (Debian's chromium driven by Playwright) loads the app, uploads an example, runs it with the
defaults, waits for the animated globe and the log-density map, checks that no error appeared, plays the
animation to its end and checks there that the frame is labelled (step, t, noise) and that the samples are
visible around the best guess (pixels of the samples' colour where the last frame's camera looks), then saves
a screenshot.

CI: `apt-get install -y chromium` (the Playwright browser download is not reachable). Set GEODEMO_SCREENSHOT to a
path to keep the screenshot (assets/screenshot.png is made this way).
"""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import sync_playwright

import app
from app_fixtures import build_test_model, launch_app
from geodemo.plotting.globe import END_COLOR, GUESS_COLOR
from geodemo.registry import shipped_models

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]

pytestmark = pytest.mark.slow  # a real browser: tens of seconds

if not Path(CHROMIUM).is_file():
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """The app with the shipped default model (a random test model if none is shipped); the full map only
    when a screenshot is kept."""
    folder = None if shipped_models() else build_test_model(tmp_path_factory.mktemp("models") / "browser-test-model")
    grid = {} if os.environ.get("GEODEMO_SCREENSHOT") else {"coarse_deg": 45.0, "levels": 1, "max_cells_per_level": 8}
    url, demo = launch_app(folder, map_options=grid)
    yield url
    demo.close()


def test_upload_run_and_see_globe_and_map(url, tmp_path):
    examples, _ = app.example_images()
    assert examples, "assets/examples/ should ship example views"
    image = next((e for e in examples if "nile" in e), examples[0])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url, wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_selector(".geodemo-globe .main-svg", timeout=60_000)  # the empty Earth is drawn at load
        page.locator("input[type=file]").first.set_input_files(image)
        page.wait_for_selector("button:has-text('Locate')")
        page.get_by_role("button", name="Locate").click()
        page.wait_for_function(
            "() => { const g = document.querySelector('.geodemo-globe');"
            " return g && g._transitionData && g._transitionData._frames && g._transitionData._frames.length > 1; }",
            timeout=90_000)
        page.wait_for_selector("#density-map img", timeout=120_000)
        page.wait_for_function("() => document.querySelector('#summary').innerText.includes('highest log-density')"
                               " && document.querySelectorAll('.progress-text, .eta-bar, .generating').length === 0",
                               timeout=400_000)  # the last refinement has arrived and nothing is pending (on 2
        # busy cores, with Chromium's software WebGL drawing the globe meanwhile, the map takes minutes)
        page.locator(".geodemo-globe .updatemenu-button").first.click()  # ▶ Play: the animation advances
        page.wait_for_function("() => document.querySelector('.geodemo-globe').layout.sliders[0].active > 3",
                               timeout=60_000)
        assert page.locator(".toast-body.error").count() == 0
        assert page.locator(".geodemo-globe canvas").count() >= 1  # WebGL scene
        assert "Best guess" in page.locator("#summary").inner_text()
        page.wait_for_function("() => { const s = document.querySelector('.geodemo-globe').layout.sliders[0];"
                               " return s.active === s.steps.length - 1; }", timeout=60_000)  # played to the end
        page.wait_for_timeout(1500)  # the last frame's camera move is drawn
        label = page.evaluate("() => { const s = document.querySelector('.geodemo-globe').layout.sliders[0];"
                              " return s.steps[s.active].label; }")  # the frame label the slider shows
        globe_shot = tmp_path / "globe.png"
        page.locator(".geodemo-globe").screenshot(path=str(globe_shot))
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert re.search(r"step 32 of 32 · t = 0\.000 · noise .* = 0\.\d{3}", label), label  # the frame's label
    assert near_centre(globe_shot, END_COLOR) >= 30  # the samples around the best guess, which the camera faces
    assert near_centre(globe_shot, GUESS_COLOR) >= 5  # and the best-guess marker over them, open
    assert shot.stat().st_size > 50_000
    assert not errors, errors
    keep = os.environ.get("GEODEMO_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def near_centre(png: Path, colour: str, half: int = 70, tolerance: float = 60.0) -> int:
    """How many pixels within `half` px of the centre of the globe's 3D view (the plot area below the title
    margin) are within `tolerance` (RGB distance) of colour."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=float)
    top = 40  # the figure's top margin (geodemo.plotting.globe)
    cy, cx = top + (pixels.shape[0] - top) // 2, pixels.shape[1] // 2
    window = pixels[cy - half:cy + half, cx - half:cx + half]
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    return int((np.linalg.norm(window - target, axis=-1) < tolerance).sum())
