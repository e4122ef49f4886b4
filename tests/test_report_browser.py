"""report.html read as a person reads it: in a real headless Chromium at a 1280x900 window, for a made-up sweep
folder and for the real digits sweep. The page fits the window (the wide leaderboard scrolls inside itself), every
figure loads and is shown at (nearly) its own size, so its text stays legible, and nothing goes wrong in the console.

REPORT_SCREENSHOT=docs/report.png saves the real sweep's report as the README's picture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import browser
from tests._digits_sweep import digits_sweep
from tests.test_report import write_sweep
from tuner import folder as sweep_folder
from tuner.report import build_report

MIN_SHOWN = 0.85  # an image shown below 85 % of its size would shrink its ~14 px text towards unreadable


@pytest.fixture(autouse=True)
def _chromium():
    browser.require_chromium()


def check_page(html: Path, *, screenshot: Path | None = None) -> dict:
    with browser.open_page(html.resolve().as_uri()) as page:
        page.wait_for_function("() => Array.from(document.images).every(img => img.complete)")
        seen = browser.layout(page)
        scrollers = page.evaluate("""() => Array.from(document.querySelectorAll('.table-scroll')).map(div => ({
            shown: div.clientWidth, content: div.scrollWidth, overflow: getComputedStyle(div).overflowX }))""")
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        errors = list(page.errors)
    assert seen["window"] == browser.WIDTH
    assert seen["document"] <= seen["window"], f"the page is {seen['document']} px wide in a {seen['window']} px window"
    assert seen["images"], "no figure in the report"
    for image in seen["images"]:
        assert image["decoded"], f"figure {image['alt']!r} did not load"
        assert image["shown"] >= MIN_SHOWN * min(image["natural"], seen["window"]), \
            f"figure {image['alt']!r} is {image['natural']} px wide but shown at {image['shown']} px"
    for div in scrollers:  # a table wider than the column scrolls inside its own box, the page does not
        assert div["shown"] <= seen["window"] and div["overflow"] == "auto"
    assert errors == [], errors
    return {"layout": seen, "tables": scrollers}


def test_a_made_up_report_reads_well_in_chromium(tmp_path):
    folder = write_sweep(tmp_path, with_final=True)
    report = build_report(sweep_folder.load(folder))
    seen = check_page(report.html)
    assert len(seen["layout"]["images"]) == len(report.figures)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, mlflow_server) -> Path:
    return digits_sweep(tmp_path_factory, mlflow_server)


@pytest.mark.integration
def test_the_real_sweeps_report_reads_well_in_chromium(sweep_dir, tmp_path):
    report = build_report(sweep_folder.load(sweep_dir), out_dir=tmp_path / "report")
    shot = Path(os.environ["REPORT_SCREENSHOT"]) if os.environ.get("REPORT_SCREENSHOT") else tmp_path / "report.png"
    seen = check_page(report.html, screenshot=shot)
    assert len(seen["layout"]["images"]) == len(report.figures)
    leaderboard = seen["tables"][0]  # resnet_rsb searches 11 keys: wider than the column, so it scrolls
    assert leaderboard["content"] > leaderboard["shown"]
    assert shot.stat().st_size > 50_000
