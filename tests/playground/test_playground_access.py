"""Who may chat and how the page reads: with API keys configured the page asks for one and
chats only with it (kept in the browser); every control has a label; the page reads at 320 px
and in dark mode."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.playground.conftest import PageProblems, artifact
from tests.playground.playground_page import Playground
from tests.server_process import ServerProcess

API_KEY = "playground-test-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    process = ServerProcess(tmp_path_factory.mktemp("keyed"), api_keys=API_KEY).start()
    yield process
    process.kill()


def test_with_keys_configured_the_page_chats_only_with_a_key(open_page, keyed_server):
    page = open_page(keyed_server)
    playground = Playground(page)
    notice = page.locator("#notice")
    expect(notice).to_contain_text("needs an API key")
    expect(playground.send_button).to_be_disabled()
    key = page.get_by_label("API key")
    expect(key).to_be_visible()  # Settings opened to ask for it

    key.fill("not-the-key-at-all")
    key.press("Enter")
    expect(notice).to_contain_text("invalid API key")
    expect(playground.send_button).to_be_disabled()

    key.fill(API_KEY)
    key.press("Enter")
    playground.ready()
    turn = playground.ask("My name is Ingrid.")
    assert playground.figures(turn)["finish"] == "stop"

    page.reload()  # the key is kept in this browser's storage
    Playground(page).ready()
    assert page.get_by_label("API key").input_value() == API_KEY


def test_every_control_has_a_label(open_page, server):
    page = open_page(server)
    Playground(page).ready()
    page.locator("#settings summary").click()
    unnamed = page.evaluate("""() => [...document.querySelectorAll("input, select, textarea")]
        .filter((c) => c.labels.length === 0 && !c.getAttribute("aria-label")).map((c) => c.id)""")
    assert unnamed == []
    for label in ("Model", "Message", "Temperature", "Top-p", "Max tokens", "Seed", "API key"):
        expect(page.get_by_label(label)).to_be_visible()
    for name in ("New", "Fork", "Delete", "Stop", "Send"):
        expect(page.get_by_role("button", name=name)).to_be_visible()


def luminance(page, selector: str, prop: str) -> float:
    """The relative luminance (0 black .. 1 white) of a computed colour."""
    rgb = page.locator(selector).evaluate(
        f"node => getComputedStyle(node).{prop}.match(/[\\d.]+/g).slice(0, 3).map(Number)")
    channel = [(c / 255) / 12.92 if c <= 10 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * channel[0] + 0.7152 * channel[1] + 0.0722 * channel[2]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_page_reads_at_320_px_in_light_and_dark(open_page, server, scheme):
    page = open_page(server, viewport={"width": 320, "height": 640}, color_scheme=scheme)
    playground = Playground(page).ready()
    playground.ask("My name is Ingrid.")
    playground.ask("What is my name?")
    page.locator("#settings summary").click()
    assert page.evaluate("document.documentElement.scrollWidth") <= 320  # no sideways scroll
    for selector in ("#send", "#prompt", "#memory-chart", "#fork-session", "#api-key"):
        box = page.locator(selector).bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 320, selector
    background = luminance(page, "body", "backgroundColor")
    text = luminance(page, "body", "color")
    assert (background < 0.05 and text > 0.6) if scheme == "dark" else (
        background > 0.85 and text < 0.05)
    contrast = (max(background, text) + 0.05) / (min(background, text) + 0.05)
    assert contrast >= 7  # WCAG AAA for body text
    page.screenshot(path=artifact(f"320px-{scheme}.png"), full_page=True)


def test_a_page_opened_while_the_model_loads_chats_once_it_is_loaded(browser, start_server):
    server = start_server(wait=False)
    deadline = time.monotonic() + 120
    while not serves_the_page(server) and time.monotonic() < deadline:
        time.sleep(0.05)  # the page is served before the model has loaded
    context = browser.new_context()
    try:
        page = context.new_page()
        problems = PageProblems(page)
        statuses = []
        page.on("response", lambda r: statuses.append(r.status) if r.url.endswith(
            "/v1/models") else None)
        page.goto(server.url + "/")
        playground = Playground(page).ready()
        if statuses[0] != 503:
            pytest.skip("the model loaded before the page first asked for it")
        expect(page.locator("#notice")).to_be_empty()
        assert playground.figures(playground.ask("My name is Ingrid."))["finish"] == "stop"
        assert problems.errors == []
    finally:
        context.close()


def serves_the_page(server: ServerProcess) -> bool:
    try:
        return httpx.get(server.url + "/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
