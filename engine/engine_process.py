"""The engine in a process of its own (vLLM V1's engine core): the serving process keeps the
asyncio side (`ProcessEngine`), the engine process runs the loop with a GIL to itself.

In a thread beside the server, every torch call of a step hands the GIL over, and the server's
busy event loop may hold it for a switch interval before the engine gets it back; in its own
process the step runs as it does alone. Requests, commands and outputs (states included)
travel pickled over one socket pair; each process reads in a thread of its own, so neither side
ever blocks on a full socket. The engine process follows its parent: it ignores SIGINT and
SIGTERM (the server drains first, then says "stop"), and exits when the socket closes.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from engine.engine_client import EngineClient
from engine.engine_config import EngineConfig
from engine.engine_info import EngineInfo
from engine.engine_stats import EngineStats
from engine.errors import EngineOverloaded, InvalidRequestError
from engine.llm_engine import check_request
from engine.sequence import Request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineLaunch:
    """What the engine process builds its engine from."""

    model_dir: str
    config: EngineConfig
    tokenizer_dir: str | None = None
    # process-wide start-up before torch starts a thread (the server's malloc tuning and log
    # format); a module-level function (or a partial of one), pickled by name
    setup: Callable[[], object] | None = None


class EngineProcessError(RuntimeError):
    """The engine process failed to start, or exited."""


class ProcessEngine(EngineClient):
    """`generate()` / `abort()` / `stats()` as `AsyncEngine`'s, over an engine process."""

    def __init__(self, launch: EngineLaunch, timeout: float = 600.0):
        """Starts the engine process and waits until its engine is built (blocking)."""
        super().__init__()
        ours, theirs = socket.socketpair()
        root = str(Path(__file__).resolve().parents[1])  # importable, installed or not
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "engine.engine_process", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), env={**os.environ, "PYTHONPATH": path})
        theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._conn.send_bytes(pickle.dumps(launch))
            ready = self._wait_ready(timeout)
        except BaseException:
            self._conn.close()
            raise
        self._info: EngineInfo = ready[1]
        self._stats: EngineStats = ready[2]
        self._num_sent = self._num_taken = 0  # "add" commands sent / taken by the engine
        self._commands: queue.SimpleQueue = queue.SimpleQueue()  # reentrant: safe from __del__
        self._writer = threading.Thread(target=self._write, name="retserve-engine-writer",
                                        daemon=True)
        self._reader = threading.Thread(target=self._read, name="retserve-engine-reader",
                                        daemon=True)
        self._writer.start()
        self._reader.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def is_alive(self) -> bool:
        return not self._is_stopped and self._proc.poll() is None

    @property
    def info(self) -> EngineInfo:
        return self._info

    def stats(self) -> EngineStats:
        """As of the engine's last round (sent with its outputs, and when it goes idle)."""
        return self._stats

    def _wait_ready(self, timeout: float) -> tuple:
        deadline = time.monotonic() + timeout
        message = None
        while message is None:
            if self._conn.poll(0.1):  # read before looking at the exit: "failed" then exit
                try:
                    message = pickle.loads(self._conn.recv_bytes())
                except (EOFError, OSError):
                    break
            elif self._proc.poll() is not None or time.monotonic() > deadline:
                break
        if message is None:
            self._proc.kill()
            raise EngineProcessError(
                f"the engine process exited (code {self._proc.wait()}) before it was ready")
        if message[0] != "ready":
            self._proc.wait()
            raise EngineProcessError(f"the engine could not be built: {message[1]}")
        return message

    def _prepare(self, request: Request) -> Request:
        check_request(request, self._info.model_config, self._info.config)
        return request

    def _num_waiting(self) -> int:
        return self._stats.num_waiting + self._num_sent - self._num_taken

    def _submit(self, command: tuple) -> None:
        if command[0] == "add":
            self._num_sent += 1
        self._commands.put(command)

    def _start(self) -> None:
        pass  # the reader runs from the start: it keeps the stats fresh

    def _write(self) -> None:
        while (command := self._commands.get()) is not None:
            try:
                self._conn.send_bytes(pickle.dumps(command, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:  # the engine process is gone; the reader reports it
                return

    def _read(self) -> None:
        try:
            while True:
                message = pickle.loads(self._conn.recv_bytes())
                if message[0] == "stopped":
                    return
                _, items, self._stats, self._num_taken = message
                self._deliver(items)
        except (EOFError, OSError):
            pass
        except Exception:  # a message this side cannot read: no stream may wait on it forever
            logger.exception("unreadable message from the engine process; stopping it")
            self._proc.kill()
        if not self._is_stopped:
            logger.error("the engine process exited (code %s)", self._proc.wait())
            self._is_stopped = True
            self._on_loop(self._fail_streams, EngineProcessError("the engine process exited"))

    def shutdown(self, timeout: float = 30.0) -> None:
        was_stopped, self._is_stopped = self._is_stopped, True
        if not was_stopped:
            self._commands.put(("stop", None))
        self._commands.put(None)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._reader.join(5)
        self._writer.join(5)
        self._conn.close()
        self._fail_streams(RuntimeError("the engine is shut down"))


# the engine process -------------------------------------------------------------------------

def _portable(items: list) -> list:
    """Errors the other side can unpickle and map: the engine's own, others as RuntimeError."""
    return [item if not isinstance(item, tuple) or isinstance(item[1], (
        EngineOverloaded, InvalidRequestError)) else
        (item[0], RuntimeError(f"{type(item[1]).__name__}: {item[1]}")) for item in items]


def _read_commands(conn: Connection, core) -> None:
    try:
        while True:
            command = pickle.loads(conn.recv_bytes())
            if command[0] == "stop":
                core.stop()
                return
            core.submit(command)
    except (EOFError, OSError):  # the serving process is gone: nobody to serve
        os._exit(1)


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when this process ends
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    conn = Connection(fd)
    launch: EngineLaunch = pickle.loads(conn.recv_bytes())
    if launch.setup is not None:
        launch.setup()
    import torch

    from engine.engine_loop import EngineLoop
    from engine.llm_engine import LLMEngine
    from engine.tokenizer import Tokenizer

    if launch.config.num_threads:
        torch.set_num_threads(launch.config.num_threads)
    try:
        tokenizer = Tokenizer.from_dir(launch.tokenizer_dir) if launch.tokenizer_dir else None
        engine = LLMEngine.from_checkpoint(launch.model_dir, launch.config, tokenizer)
    except Exception as e:
        logger.exception("the engine could not be built")
        conn.send_bytes(pickle.dumps(("failed", f"{type(e).__name__}: {e}")))
        return 1
    gc.collect()
    gc.freeze()  # the model and pool live as long as the process: out of the collector's sight

    def deliver(items: list) -> None:
        message = ("outputs", _portable(items), engine.stats(), core.num_added)
        conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))

    core = EngineLoop(engine, deliver)
    conn.send_bytes(pickle.dumps(("ready", engine.info, engine.stats())))
    threading.Thread(target=_read_commands, args=(conn, core), name="retserve-engine-commands",
                     daemon=True).start()
    try:
        core.run()
    except OSError:  # the serving process closed the socket mid-send
        return 1
    engine.close()
    conn.send_bytes(pickle.dumps(("stopped",)))
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1])))
