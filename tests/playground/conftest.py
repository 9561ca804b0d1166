"""The playground in a real browser: Debian's Chromium driven by Playwright (never a downloaded
browser), against real `retserve serve` processes on the shipped model. Skipped, with the reason,
only where Playwright or Chromium is missing (`.ci/run` installs Chromium)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.server_process import ServerProcess

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]
# a slow shared machine: wait on conditions, for up to this long
TIMEOUT_MS = 60_000
ARTIFACTS = Path(os.environ.get("RETSERVE_TEST_ARTIFACTS", REPO / "test-artifacts")) / "playground"


def chromium_path() -> str | None:
    given = os.environ.get("RETSERVE_CHROMIUM")
    if given:
        return given
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


# per module, not per session: while the sync API runs, its event loop counts as running in
# this thread, and every asyncio test after it would refuse to start
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium not found (apt-get install -y chromium, or set RETSERVE_CHROMIUM)")
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for a module, on the embedded store `retserve serve` uses by default; replies
    may run to LONG_REPLY tokens, so that one is still streaming when a test stops it."""
    process = ServerProcess(tmp_path_factory.mktemp("playground"),
                            max_output_tokens=LONG_REPLY).start()
    yield process
    process.kill()


class PageProblems:
    """What the page must never do: throw, or trip its own Content-Security-Policy."""

    def __init__(self, page):
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("console", self._console)
        page.on("dialog", self._dialog)

    def _console(self, message) -> None:
        if "Content Security Policy" in message.text:
            self.errors.append(f"CSP violation: {message.text}")

    def _dialog(self, dialog) -> None:  # alert() from injected markup would land here
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture
def open_page(browser):
    """open_page(server, **context options) -> a loaded page; checked for errors at teardown."""
    contexts, problems = [], []

    def open_(server: ServerProcess, **options):
        viewport = options.pop("viewport", {"width": 1100, "height": 680})
        context = browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        problems.append(PageProblems(page))
        page.goto(server.url + "/")
        return page

    yield open_
    for context in contexts:
        context.close()
    for seen in problems:
        assert seen.errors == [] and seen.dialogs == []


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS / name


def requests_running(server: ServerProcess) -> float:
    """retserve_num_requests_running from the server's /metrics."""
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith("retserve_num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no retserve_num_requests_running in /metrics")


LONG_REPLY = 200_000  # tokens: minutes at any decode speed


def with_fields(**fields):
    """A route handler that adds fields to the chat request the page sends (to the real server:
    nothing is answered for it)."""

    def handle(route) -> None:
        route.continue_(post_data=json.dumps({**route.request.post_data_json, **fields}))

    return handle
