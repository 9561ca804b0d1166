"""Chatting in the playground, in a real browser against a real server: the second turn feeds
only its new tokens and recalls the first; stop ends a stream and frees its slot; fork keeps
what the session was told; delete removes it on the server."""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import expect

from tests.playground.conftest import LONG_REPLY, artifact, requests_running, with_fields
from tests.playground.playground_page import Playground
from training.chat_data import ACKS


@pytest.fixture
def playground(open_page, server) -> Playground:
    return Playground(open_page(server)).ready()


def session(server, session_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/sessions/{session_id}", timeout=10)


def test_second_turn_feeds_only_its_new_tokens_and_recalls_the_first(playground, server):
    first = playground.ask("My name is Ingrid.")
    assert playground.reply(first) in ACKS  # an acknowledgement the model learned
    second = playground.ask("What is my name?")
    assert "Ingrid" in playground.reply(second)

    told, asked = playground.figures(first), playground.figures(second)
    assert int(told["cached"]) == 0 and int(told["fed"]) > 0
    stored = session(server, playground.session_id()).json()
    # the second turn started from the first turn's stored state: every token of it cached
    assert int(asked["cached"]) == int(told["fed"]) + int(told["completion"]) + 1
    assert 0 < int(asked["fed"]) < int(asked["cached"])
    assert stored["num_tokens"] == int(asked["cached"]) + int(asked["fed"]) + int(
        asked["completion"]) + 1

    # the chart: one measured point per turn, the state one size, the KV line computed
    chart = playground.page.locator("#memory-chart")
    expect(chart.locator(".point")).to_have_count(2)
    first_point, second_point = chart.locator(".point title").all_text_contents()
    size = f"{stored['num_bytes'] / 1024:.0f} KiB"  # the shipped model's state: 304 KiB
    assert second_point.endswith(f"{stored['num_tokens']} tokens, {size} stored")
    assert first_point.endswith(f"{size} stored")  # one size after each turn
    assert chart.locator(".kv title").text_content().startswith("KV cache (computed)")
    summary = playground.page.locator("#memory-summary").inner_text()
    assert f"After {stored['num_tokens']} tokens" in summary and "(computed)" in summary
    playground.page.screenshot(path=artifact("two-turns.png"), full_page=True)


def test_a_message_sent_as_soon_as_a_reply_ends_is_not_dropped(playground):
    """The page reads the stored state after each turn; a message sent while that read is
    still on its way goes at once (it was dropped while Send waited for the read)."""
    page = playground.page
    held = []
    page.route("**/v1/sessions/*", lambda route: held.append(route))  # released below
    playground.ask("My name is Ingrid.")
    second = playground.type_and_send("What is my name?")
    expect(playground.turns).to_have_count(2, timeout=5000)
    expect(second.locator(".stats[data-finish]")).to_have_count(1)
    assert held
    for route in held:
        route.continue_()
    page.unroute("**/v1/sessions/*")
    assert "Ingrid" in playground.reply(second)
    expect(page.locator("#memory-chart .point")).to_have_count(2)


def test_stop_ends_the_stream_frees_the_slot_and_the_next_turn_goes_on(playground, server):
    playground.ask("My name is Ingrid.")
    # a reply that would run for minutes: the end-of-turn token ignored, asked by the request
    # the page sends (the page has no such setting)
    playground.page.route("**/v1/chat/completions", with_fields(ignore_eos=True))
    playground.set("Max tokens", str(LONG_REPLY))
    long = playground.type_and_send("Tell me a long story.")
    expect(long.locator(".assistant .text")).not_to_be_empty()
    assert requests_running(server) == 1
    playground.stop_button.click()
    playground.wait_finished(long)
    assert playground.figures(long)["finish"] == "stopped"
    expect(long.locator(".stats")).to_contain_text("not stored")
    deadline = time.monotonic() + 30
    while requests_running(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert requests_running(server) == 0  # the server let the slot go when the stream closed

    playground.page.unroute("**/v1/chat/completions")
    playground.set("Max tokens", "64")
    after = playground.ask("What is my name?")
    assert "Ingrid" in playground.reply(after)
    # the stopped turn was never stored: the state is the one after the first turn
    told = playground.figures(playground.turns.nth(0))
    assert int(playground.figures(after)["cached"]) == int(told["fed"]) + int(
        told["completion"]) + 1


def test_fork_starts_a_new_session_that_keeps_the_told_fact(playground, server):
    playground.ask("My name is Ingrid.")
    original = playground.session_id()
    told = session(server, original).json()
    playground.page.get_by_role("button", name="Fork").click()
    expect(playground.page.locator("#transcript .divider")).to_contain_text(
        f"Forked from {original}")
    forked = playground.session_id()
    assert forked != original
    assert session(server, forked).json()["num_tokens"] == told["num_tokens"]

    answer = playground.ask("What is my name?")
    assert "Ingrid" in playground.reply(answer)
    assert int(playground.figures(answer)["cached"]) == told["num_tokens"]
    assert session(server, forked).json()["num_tokens"] > told["num_tokens"]
    assert session(server, original).json()["num_tokens"] == told["num_tokens"]  # untouched


def test_delete_removes_the_session_on_the_server_and_starts_a_new_one(playground, server):
    playground.ask("My name is Ingrid.")
    deleted = playground.session_id()
    assert session(server, deleted).status_code == 200
    playground.page.get_by_role("button", name="Delete").click()
    expect(playground.page.locator("#notice")).to_contain_text(f"Deleted session {deleted}")
    assert session(server, deleted).status_code == 404
    assert playground.session_id() != deleted
    expect(playground.turns).to_have_count(0)
    expect(playground.page.get_by_role("button", name="Fork")).to_be_disabled()

    fresh = playground.ask("What is my name?")  # a new session: nothing told
    assert int(playground.figures(fresh)["cached"]) == 0
    assert "Ingrid" not in playground.reply(fresh)


def test_keyboard_alone_sends_breaks_lines_and_stops(playground, server):
    page = playground.page
    expect(playground.prompt).to_be_focused()  # on load: typing goes straight to the message
    page.keyboard.type("My name is")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("Ingrid.")
    assert playground.prompt.input_value() == "My name is\nIngrid."
    assert playground.turns.count() == 0  # Shift+Enter sent nothing
    page.keyboard.press("Enter")
    playground.wait_finished(playground.turns.nth(0))
    expect(playground.prompt).to_have_value("")
    expect(playground.prompt).to_be_focused()  # ready for the next message

    page.route("**/v1/chat/completions", with_fields(ignore_eos=True, max_tokens=LONG_REPLY))
    page.keyboard.type("Tell me a long story.")
    page.keyboard.press("Enter")
    running = playground.turns.nth(1)
    expect(running.locator(".assistant .text")).not_to_be_empty()
    page.keyboard.press("Escape")
    playground.wait_finished(running)
    assert playground.figures(running)["finish"] == "stopped"
