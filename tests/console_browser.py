"""A browser for the console's tests: Debian's Chromium (``/usr/bin/chromium``, which
``.ci/services`` installs) driven by Playwright, which never downloads a browser of its own
(PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD). A page records every console error, uncaught script error
and failed request, and a test fails on any it did not expect."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support import _in_ci

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "console"
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

Browser = Any  # playwright.sync_api.Browser (imported lazily: only these tests need it)


@contextmanager
def browser_or_skip() -> Iterator[Browser]:
    """The headless Chromium; skipped locally (failed in CI) when it or Playwright is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed (the dev extra has it)")
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/services does)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield browser
        finally:
            browser.close()


def _missing(reason: str) -> None:
    if _in_ci():
        pytest.fail(reason)
    pytest.skip(reason)


@dataclass
class Watched:
    """A page of its own browser context, with what went wrong in it."""

    page: Any
    name: str
    errors: list[str] = field(default_factory=list)
    expected_statuses: list[int] = field(default_factory=list)

    @classmethod
    @contextmanager
    def open(cls, browser: Browser, width: int, name: str) -> Iterator[Watched]:
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        watched = cls(page, name)
        page.on("console", watched._console)
        page.on("pageerror", lambda exc: watched.errors.append(f"uncaught: {exc}"))
        page.on("requestfailed", watched._request_failed)
        page.on("response", watched._response)
        try:
            yield watched
        finally:
            context.close()

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def _request_failed(self, request: Any) -> None:
        # An open event stream is cut when its page is left: that is not a failure.
        if "/console/live/stream" in request.url and "ERR_ABORTED" in (request.failure or ""):
            return
        self.errors.append(f"request failed: {request.url} {request.failure}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")

    def expect_failed_status(self, status: int) -> None:
        """The page just answered ``status`` on purpose: take that one error off the list."""
        wanted = [e for e in self.errors if e.startswith(f"HTTP {status}:")]
        assert wanted, f"no HTTP {status} seen: {self.errors}"
        self.errors.remove(wanted[0])
        # The browser logs a failed document load on the console too.
        for error in list(self.errors):
            if error.startswith("console: Failed to load resource") and f"{status}" in error:
                self.errors.remove(error)
                break

    def assert_clean(self) -> None:
        assert self.errors == [], "\n".join(self.errors)

    def shot(self, page_name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{page_name}-{self.name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


def sign_in(page: Any, base_url: str, key: str) -> None:
    page.goto(f"{base_url}/console/login")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base_url}/")


def no_horizontal_scroll(page: Any) -> None:
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"the page is {overflow} px wider than the window"


def unlabelled_fields(page: Any) -> list[str]:
    """Visible form fields without a label (a <label for>, a wrapping <label>, aria-label)."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
          .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
          .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
          .map(el => el.outerHTML)"""
    )
    return found
