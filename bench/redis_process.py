"""Private redis-server processes for tests and benchmarks: on a free port, in their own
directory."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from bench.server_process import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A free port P <= 55535 whose cluster bus port P + 10000 is free too."""
    while True:
        port = random.randrange(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=timeout,
                                  socket_connect_timeout=timeout) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


class RedisServer:
    """A redis-server process of our own, in its own directory, on a free port."""

    def __init__(self, workdir: Path, *args: str, port: int | None = None,
                 sentinel_of: int | None = None):
        self.workdir = workdir.resolve()  # redis-server enters --dir before it opens its log
        self.args = args
        self.sentinel_of = sentinel_of  # port of the master this Sentinel watches
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [REDIS_SERVER]
        if self.sentinel_of is not None:  # Sentinel insists on a config file it can rewrite
            conf = self.workdir / "sentinel.conf"
            conf.write_text(f"sentinel monitor main 127.0.0.1 {self.sentinel_of} 1\n")
            cmd += [str(conf), "--sentinel"]
        else:
            cmd += ["--save", ""]
        cmd += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--daemonize", "no", "--protected-mode", "no",
                "--logfile", str(self.workdir / "redis.log"), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-2000:]}")
            if redis_answers(self.url, 0.2):
                return
            time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} not ready: {self.log()[-2000:]}")

    def log(self) -> str:
        path = self.workdir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """kill -9 and reap; the port frees at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process still dies, but be sure
            self.proc.kill()
            self.proc.wait(10)
