"""A real headless browser for tests: Debian's Chromium (`apt-get install chromium`), driven by Playwright for Python
with no browser download (`executable_path`). For the report here, and for any web page a test serves (MLflow's UI).

    from tests.browser import open_page, require_chromium

    require_chromium()                       # pytest.skip with the reason when Chromium or Playwright is missing
    with open_page("file:///.../report.html", width=1280, height=900) as page:
        page.evaluate("() => document.title")
        assert page.errors == []             # console errors, uncaught exceptions, failed requests

CHROMIUM (environment) overrides where the browser is; the launch is sandbox-free (tests run as root in CI) and
quiet (no GPU, no background networking, no component updates, no sync, no first-run), so nothing is fetched.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run"]
WIDTH, HEIGHT = 1280, 900  # a normal laptop window
TIMEOUT_MS = 30_000


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and shutil.which(CHROMIUM) is None:
        return (f"no Chromium at {CHROMIUM} (as root: apt-get install -y chromium chromium-driver; .ci/run does it; "
                f"or set CHROMIUM=/path/to/chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def require_chromium() -> None:
    """Skip the calling test, with the reason, where there is no browser to drive."""
    reason = missing()
    if reason:
        pytest.skip(reason)


@contextlib.contextmanager
def browser() -> Iterator["object"]:
    """A launched headless Chromium (playwright.sync_api.Browser), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS,
                                          timeout=TIMEOUT_MS)
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def open_page(url: str, *, width: int = WIDTH, height: int = HEIGHT, wait_until: str = "load") -> Iterator["object"]:
    """A page of a fresh browser at `width` x `height` CSS pixels with `url` loaded. `page.errors` lists what went
    wrong while it loaded and after: console errors, uncaught page exceptions and requests that failed."""
    with browser() as launched:
        context = launched.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("console", lambda message: errors.append(f"console {message.type}: {message.text}")
                if message.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url[:120]} "
                                                               f"({request.failure})"))
        page.errors = errors
        try:
            page.goto(url, wait_until=wait_until)
            yield page
        finally:
            context.close()


def layout(page) -> dict:
    """What a page looks like to a reader: the window and document widths, and every image with its natural and
    shown size and whether it loaded."""
    return page.evaluate("""() => ({
        window: window.innerWidth,
        document: document.documentElement.scrollWidth,
        body: document.body.scrollWidth,
        images: Array.from(document.images).map(img => ({
            alt: img.alt, complete: img.complete, natural: img.naturalWidth, shown: img.clientWidth,
            decoded: img.complete && img.naturalWidth > 0 })),
    })""")
