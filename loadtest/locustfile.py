"""Multi-turn chat load on retserve, as agent backends make it.

Each Locust user holds one conversation for `--turns` turns and streams every reply (SSE):
- `HistoryUser` resends the whole history each turn, like an OpenAI client; the server finds the
  longest stored prefix and feeds only the new tokens;
- `SessionUser` names a session (body `session_id`, or header `X-Session-Id` on every other user)
  and sends only the new message (the whole conversation when the server answers that the
  session's state has expired).
Conversations alternate between the `--servers` turn by turn, so every turn after the first is
served by a replica that did not serve the one before: its state comes from the shared store.

Besides the HTTP request, each turn reports vLLM's benchmark latencies as Locust entries of type
METRIC: TTFT, TPOT, ITL (one entry per gap between content chunks) and E2EL.

With `--lockstep`, conversation k+1 of no user starts before every user finished turn k; then,
after `--settle` seconds (longer than the servers' --parent-grace, so retired parents have
expired), the probe sweeps expired keys and samples server /metrics and Redis INFO memory:
memory at "all conversations at turn k".
With `--results-dir`, per-turn samples, a sample every `--sample-interval` seconds, one row per
request and the transcripts are written there. `python -m loadtest.run` drives all of this.

    locust -f loadtest/locustfile.py --headless -u 8 -r 8 --host http://127.0.0.1:8000 --turns 5
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from pathlib import Path

import gevent
from locust import HttpUser, constant, events, task
from locust.exception import StopUser

from loadtest.barrier import TurnBarrier
from loadtest.chat_turn import TurnFailed, TurnResult, chat_body, read_stream
from loadtest.conversation import Conversation
from loadtest.probe import Probe, Sample

# a session whose state is gone (expired, evicted, or its last move lost to a store error): the
# server asks for the whole conversation, as an OpenAI-style client would send it anyway
SESSION_EXPIRED = "session_state_expired"


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    group = parser.add_argument_group("retserve conversations")
    group.add_argument("--turns", type=int, default=10, help="turns per conversation")
    group.add_argument("--servers", default="", help="comma-separated base URLs that each "
                       "conversation alternates between, turn by turn (default: --host)")
    group.add_argument("--model", default="retnet-tiny-chat")
    group.add_argument("--max-tokens", type=int, default=48)
    group.add_argument("--conversation-seed", type=int, default=0)
    group.add_argument("--think-time", type=float, default=0.0,
                       help="seconds between a conversation's turns (without --lockstep)")
    group.add_argument("--lockstep", action="store_true",
                       help="turn k+1 starts when every conversation finished turn k")
    group.add_argument("--settle", type=float, default=0.0,
                       help="seconds at each lockstep barrier before the memory sample")
    group.add_argument("--redis-url", default="", help="Redis to sample (INFO memory)")
    group.add_argument("--results-dir", default="", help="where CSV rows are written")
    group.add_argument("--sample-interval", type=float, default=1.0)


class LoadRun:
    """What one Locust process shares among its users: conversations, probe, barrier, files."""

    def __init__(self, environment):
        self.environment = environment
        opts = environment.parsed_options
        self.opts = opts
        self.servers = [u.rstrip("/") for u in (opts.servers or environment.host).split(",")]
        self.probe = Probe(self.servers, opts.redis_url or None)
        self.results = Path(opts.results_dir) if opts.results_dir else None
        self.conversations: list[Conversation] = []
        self.numbers = itertools.count()
        self.num_users = opts.num_users or 1
        self.num_done = 0
        self.started = time.monotonic()
        self.redis_baseline = self.probe.sample(reclaim_expired=True).redis_used_memory
        self.barrier = TurnBarrier(self.num_users, self.at_turn) if opts.lockstep else None
        self._files: dict[str, tuple] = {}
        self.sampler = gevent.spawn(self._sample_loop) if self.results else None

    # files

    def write(self, name: str, row: dict) -> None:
        if self.results is None:
            return
        if name not in self._files:
            self.results.mkdir(parents=True, exist_ok=True)
            f = open(self.results / f"{name}.csv", "w", newline="")  # noqa: SIM115
            self._files[name] = (f, csv.DictWriter(f, fieldnames=list(row)))
            self._files[name][1].writeheader()
        f, writer = self._files[name]
        writer.writerow(row)
        f.flush()  # readable while the run goes on

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.kill()
        if self.results is not None:
            with open(self.results / "transcripts.jsonl", "w") as f:
                for conv in self.conversations:
                    f.write(json.dumps({"conversation": conv.index, "variant": conv.variant,
                                        "num_tokens": conv.num_tokens,
                                        "messages": conv.messages}) + "\n")
        for f, _ in self._files.values():
            f.close()

    # samples

    def tokens_held(self) -> int:
        return sum(c.num_tokens for c in self.conversations)

    def _row(self, sample: Sample) -> dict:
        return {**sample.row(), "tokens_held": self.tokens_held(),
                "num_conversations": len(self.conversations),
                "redis_conversation_bytes": sample.redis_used_memory - self.redis_baseline}

    def _sample_loop(self) -> None:
        last_print = 0.0
        while True:
            gevent.sleep(self.opts.sample_interval)
            try:
                row = self._row(self.probe.sample())
            except Exception as e:  # a probe that misses once is no reason to stop the load
                print(f"probe: {type(e).__name__}: {e}", flush=True)
                continue
            self.write("samples", row)
            if self.barrier is None and row["t"] - last_print >= 10:
                last_print = row["t"]
                turns = [c.num_turns for c in self.conversations] or [0]
                print(f"t={row['t']:.0f}s turns {min(turns)}..{max(turns)} of "
                      f"{self.opts.turns}, {row['tokens_held']:,} tokens held, "
                      f"server RSS {row['server_rss_bytes'] / 2**20:.1f} MiB", flush=True)

    def at_turn(self, turn: int) -> None:
        """Every conversation has finished `turn`: let retired parents expire, then sample."""
        gevent.sleep(self.opts.settle)
        for attempt in range(3):  # a starved server can miss one scrape's timeout
            try:
                row = {"turn": turn, **self._row(self.probe.sample(reclaim_expired=True))}
                break
            except Exception as e:
                print(f"probe at turn {turn}: {type(e).__name__}: {e}", flush=True)
                if attempt == 2:
                    return
        n = max(1, row["num_conversations"])
        self.write("per_turn", row)
        print(f"turn {turn}/{self.opts.turns}: {n} conversations, {row['tokens_held']:,} tokens "
              f"held; server RSS {row['server_rss_bytes'] / 2**20:.1f} MiB; Redis "
              f"{row['redis_conversation_bytes'] / n / 1024:.0f} KiB and "
              f"{row['redis_keys'] / n:.2f} keys per conversation", flush=True)

    def finished(self) -> None:
        self.num_done += 1
        if self.num_done >= self.num_users:
            gevent.spawn_later(0.1, self.environment.runner.quit)


RUN: LoadRun | None = None


@events.test_start.add_listener
def _start(environment, **_) -> None:
    global RUN
    RUN = LoadRun(environment)


@events.test_stop.add_listener
def _stop(environment, **_) -> None:
    if RUN is not None:
        RUN.close()


class HistoryUser(HttpUser):
    """Resends the whole conversation every turn."""

    weight = 3
    wait_time = constant(0)
    uses_session = False

    def on_start(self) -> None:
        self.run = RUN
        self.conv = Conversation(next(self.run.numbers), seed=self.run.opts.conversation_seed,
                                 variant="session" if self.uses_session else "history")
        self.run.conversations.append(self.conv)
        self.session_id = f"load-{self.run.opts.conversation_seed}-{self.conv.index}"
        self.turn = 0

    @task
    def chat_turn(self) -> None:
        run, opts = self.run, self.run.opts
        if self.turn >= opts.turns:
            run.finished()
            raise StopUser()
        self.turn += 1
        had_state = self.conv.num_turns > 0
        self.conv.ask()
        server = (self.conv.index + self.turn) % len(run.servers)
        url = run.servers[server]
        result, error = self._send(url, *self._body(opts))
        fallback = error == SESSION_EXPIRED
        if fallback:  # what the error asks for: the whole conversation, same session
            result, error = self._send(url, *self._body(opts, whole=True))
        if result is not None:
            self.conv.answered(result.text, result.total_tokens)
            self._report(result)
        else:
            self.conv.forget_question()
        run.write("requests", {
            "conversation": self.conv.index, "variant": self.conv.variant, "turn": self.turn,
            "server": server, "ok": int(result is not None), "had_state": int(had_state),
            "session_fallback": int(fallback),
            "prompt_tokens": result.prompt_tokens if result else 0,
            "cached_tokens": result.cached_tokens if result else 0,
            "completion_tokens": result.completion_tokens if result else 0,
            "ttft_ms": _ms(result.ttft) if result else "",
            "tpot_ms": _ms(result.tpot) if result else "",
            "e2el_ms": _ms(result.e2el) if result else "", "error": error or ""})
        if run.barrier is not None:
            run.barrier.wait(self.turn)
        elif opts.think_time:
            gevent.sleep(opts.think_time)

    def _body(self, opts, whole: bool = True) -> tuple[dict, dict]:
        seed = self.conv.index * 1000 + self.turn
        return chat_body(opts.model, self.conv.messages, opts.max_tokens, seed), {}

    def _send(self, url: str, body: dict, headers: dict) -> tuple[TurnResult | None, str | None]:
        sent_at = time.perf_counter()
        with self.client.post(f"{url}/v1/chat/completions", json=body, headers=headers,
                              stream=True, catch_response=True, timeout=300,
                              name="/v1/chat/completions") as response:
            if response.status_code == 404 and SESSION_EXPIRED in response.text:
                response.success()  # part of the protocol: the client resends the whole turn
                return None, SESSION_EXPIRED
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {response.text[:200]}"
                response.failure(error)
                return None, error
            try:
                result = read_stream(response.iter_lines(), sent_at)
            except (TurnFailed, ValueError, OSError) as e:
                response.failure(str(e))
                return None, str(e)
            response.success()
            return result, None

    def _report(self, result: TurnResult) -> None:
        fire = self.environment.events.request.fire

        def metric(name: str, seconds: float | None) -> None:
            if seconds is not None:
                fire(request_type="METRIC", name=name, response_time=seconds * 1000,
                     response_length=0, exception=None, context={})

        metric("TTFT", result.ttft)
        metric("TPOT", result.tpot)
        for gap in result.itl:
            metric("ITL", gap)
        metric("E2EL", result.e2el)


class SessionUser(HistoryUser):
    """Names a session and sends only the new message."""

    weight = 1
    uses_session = True

    def _body(self, opts, whole: bool = False) -> tuple[dict, dict]:
        seed = self.conv.index * 1000 + self.turn
        new = self.conv.messages if whole else self.conv.messages[-1:]
        if self.conv.index % 2:  # half say it in the header, half in the body
            return (chat_body(opts.model, new, opts.max_tokens, seed),
                    {"X-Session-Id": self.session_id})
        return chat_body(opts.model, new, opts.max_tokens, seed, self.session_id), {}


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.3f}"
