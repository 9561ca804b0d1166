"""The system under load, on loopback: retserve replicas sharing one redis-server of its own
(bench/redis_process.py), each a `retserve serve` process with its log in the results folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.server_process import free_port

REPO = Path(__file__).resolve().parents[1]


class Process:
    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None):
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "wb") as f:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, **(env or {})})
        self.name, self.log = name, log

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{tail}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Retserve(Process):
    def __init__(self, index: int, store_url: str, workdir: Path, **settings):
        self.port = free_port()
        args = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--store", store_url,
                "--data-dir", str(workdir / f"data{index}")]
        for name, value in settings.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        super().__init__(f"retserve {index}", args, workdir / f"server{index}.log",
                         env={"PYTHONUNBUFFERED": "1"})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(f"{self.url}/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n"
                           f"{self.log.read_text(errors='replace')[-2000:]}")
