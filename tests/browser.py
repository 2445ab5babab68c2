"""Debian's chromium driven by Playwright: the one way the tests open a real browser.

No browser download ever: Playwright launches ``/usr/bin/chromium`` (``.ci/run`` installs it),
headless, with the flags this machine's closed network needs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Debian chromium, closed on exit."""
    assert CHROMIUM.exists(), "chromium is missing: `apt-get install -y chromium` (.ci/run does)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            browser.close()
