"""A real Chromium for the browser tests: Debian's ``/usr/bin/chromium`` driven by Playwright.

Playwright's own browser download is never used (``executable_path`` names the system binary); in CI a
missing Chromium fails the test. Headless Chromium renders WebGL (Cornerstone3D, in OHIF) only through
SwiftShader. Screenshots go to ``test-artifacts/`` at the repository root.

Every page runs with the network limited to loopback: a request to any other host is aborted and
recorded, and the test fails if one was attempted (no page of radstack loads anything from
another host; ARCHITECTURE).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from tests.conftest import require_binary

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module: Playwright's sync API holds an event loop on this thread while it
    runs, which would make every later ``asyncio.run`` in the session fail."""
    chromium = require_binary("chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a fresh context (no cookies, no localStorage: a first visit), loopback only."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    elsewhere: list[str] = []

    def loopback_only(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort("blockedbyclient")

    context.route("**/*", loopback_only)
    try:
        yield context.new_page()
    finally:
        context.close()
    assert not elsewhere, f"the page tried to load from another host: {elsewhere}"


#: True once some viewport canvas shows an image: its pixels span more than a few grey levels.
IMAGE_SHOWN = """() => {
  for (const canvas of document.querySelectorAll('canvas')) {
    if (!canvas.width || !canvas.height || canvas.width < 64) continue;
    const copy = document.createElement('canvas');
    copy.width = canvas.width; copy.height = canvas.height;
    const context = copy.getContext('2d');
    context.drawImage(canvas, 0, 0);
    const data = context.getImageData(0, 0, copy.width, copy.height).data;
    let low = 255, high = 0;
    for (let i = 0; i < data.length; i += 4 * 7) { low = Math.min(low, data[i]); high = Math.max(high, data[i]); }
    if (high - low > 40) return true;
  }
  return false;
}"""


def log_in(page: Page, url: str, username: str, password: str) -> None:
    """Log in through radstack's login page (the worklist sends a browser without a session there)."""
    page.goto(f"{url}/")
    assert "/login" in page.url
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def screenshot(page: Page, name: str) -> Path:
    """Save a screenshot of ``page`` as a test artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
