"""How the server serves the playground: at / only when enabled, under a strict
Content-Security-Policy, with every file it loads shipped in the package."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.cli import build_parser
from server.routes.playground import PAGE_DIR
from server.settings import Settings
from tests.playground.conftest import REPO


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # no lifespan: the page needs no model, and none is loaded
    return TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("data"))))


def test_the_page_is_served_at_root_under_a_strict_content_security_policy(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = dict(d.strip().split(" ", 1) for d in response.headers["content-security-policy"]
                  .split(";"))
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "img-src"):
        assert policy[directive] == "'self'", directive  # no inline, no eval, no other host
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.head("/").status_code == 200


def test_every_file_the_page_loads_is_served_with_its_type(client):
    html = client.get("/").text
    wanted = set(re.findall(r'(?:src|href)="(/playground/[^"]+)"', html))
    for module in PAGE_DIR.glob("*.js"):  # and what each module imports
        wanted |= {f"/playground/{name}" for name in
                   re.findall(r'from "\./([\w.]+)"', module.read_text())}
    assert {"/playground/main.js", "/playground/style.css", "/playground/render.js"} <= wanted
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in sorted(wanted):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith(types[path[path.rfind("."):]]), path
        assert "content-security-policy" in response.headers


def test_the_page_has_no_inline_code_and_never_parses_strings_as_html():
    html = (PAGE_DIR / "index.html").read_text()
    assert all('src="' in tag for tag in re.findall(r"<script[^>]*>", html))
    assert not re.search(r"\son\w+=|\sstyle=|javascript:", html)
    for module in PAGE_DIR.glob("*.js"):
        source = re.sub(r"(^|\s)//[^\n]*", "", module.read_text())  # code, not comments
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                     "new Function"):
            assert sink not in source, (module.name, sink)


def test_no_playground_leaves_the_api_alone(tmp_path):
    args = build_parser().parse_args(["serve", "--no-playground"])
    assert args.playground is False
    client = TestClient(create_app(Settings(data_dir=tmp_path, playground=False)))
    response = client.get("/")
    assert response.status_code == 404 and "error" in response.json()
    assert client.get("/playground/main.js").status_code == 404
    assert client.get("/health").status_code == 503  # the API is there (its model not loaded)


def test_every_page_file_ships_as_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["server"]
    for path in PAGE_DIR.iterdir():
        name = f"playground/{path.name}"
        assert any(fnmatch(name, pattern) for pattern in patterns), name
