"""Model output is text, never markup: the page's renderer turns hostile strings into the
characters they are, and a real reply with tags in it (from the real model) shows as text."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import expect

from tests.playground.conftest import with_fields
from tests.playground.playground_page import Playground
from tests.server_process import MODEL_NAME

HOSTILE = [
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "<svg onload=window.__pwned=3><circle r=9></svg>",
    '<a href="javascript:window.__pwned=4">click</a>',
    '<iframe srcdoc="<script>parent.__pwned=5</script>"></iframe>',
    "<style>body{display:none}</style>",
    "`<img src=x onerror=window.__pwned=6>`",
    "**<b onmouseover=window.__pwned=7>bold</b>**",
    "```\n<script>window.__pwned = 8</script>\n```",
    "- <img src=x onerror=window.__pwned=9>",
    "&lt;script&gt; &amp; &#60;img&#62;",
]
MARKUP = "script, img, svg, a, iframe, style, b, [onerror], [onload], [onmouseover]"
RENDER = """async (texts) => {
    const { renderText } = await import("/playground/render.js");
    return texts.map((text) => {
        const box = document.createElement("div");
        box.append(renderText(text));
        document.body.append(box);
        return { text: box.textContent, markup: box.querySelectorAll(arguments_markup).length,
                 tags: [...box.querySelectorAll("*")].map((n) => n.tagName.toLowerCase()) };
    });
}""".replace("arguments_markup", repr(MARKUP))


@pytest.fixture
def playground(open_page, server) -> Playground:
    return Playground(open_page(server)).ready()


def test_hostile_strings_render_as_the_characters_they_are(playground):
    page = playground.page
    rendered = page.evaluate(RENDER, HOSTILE)
    page.wait_for_timeout(200)  # an injected handler (onerror, onload) would have run by now
    assert page.evaluate("window.__pwned") is None
    for text, out in zip(HOSTILE, rendered, strict=True):
        assert out["markup"] == 0, (text, out["tags"])
        assert set(out["tags"]) <= {"p", "br", "code", "strong", "em", "ul", "li", "pre"}
    # markdown markers go; every other character stays, entities included, as typed
    assert [o["text"] for o in rendered[:6]] == HOSTILE[:6]
    assert rendered[6]["text"] == "<img src=x onerror=window.__pwned=6>"
    assert rendered[7]["text"] == "<b onmouseover=window.__pwned=7>bold</b>"
    assert rendered[8]["text"] == "<script>window.__pwned = 8</script>"
    assert rendered[10]["text"] == HOSTILE[10]


def test_the_markdown_subset_renders_as_elements(playground):
    [out] = playground.page.evaluate(
        RENDER, ["Say **this** and *that* with `code`:\n- one\n- two\n\n```\nx = 1\n```"])
    assert out["tags"] == ["p", "strong", "em", "code", "ul", "li", "li", "pre", "code"]
    assert out["text"] == "Say this and that with code:onetwox = 1"


def test_a_real_reply_with_tags_in_it_shows_as_text(playground, server):
    # the shipped model echoes a phrase it is asked to repeat; a bias towards "<" (token 30 of
    # its tokenizer) makes it keep the tags' angle brackets, so the reply carries real markup
    bias = {"logit_bias": {"30": 6}}
    message = 'Repeat after me: "<img src=x onerror=alert(1)>"'
    expected = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": MODEL_NAME, "messages": [{"role": "user", "content": message}],
        "temperature": 0, "max_tokens": 256, **bias}).json()["choices"][0]["message"]["content"]
    assert "<img " in expected, f"the model no longer echoes a tag: {expected!r}"

    playground.page.route("**/v1/chat/completions", with_fields(**bias))
    turn = playground.ask(message)
    assert playground.reply(turn) == expected
    expect(turn.locator(".user .text")).to_have_text(message)
    expect(playground.page.locator("#transcript").locator(MARKUP)).to_have_count(0)
