"""Prometheus metrics at /metrics: names and buckets after vLLM's where the meaning is the same
(prefix `retserve_`, label `model_name`), so existing dashboards carry over; plus what only a
state server has: store operations, state bytes, slots, batch size per step, resident memory
(of the engine process too, where it has one).

Counters and histograms of turns are updated as turns run (`ServerMetrics` implements the chat
service's TurnMetrics); engine and store figures are read when scraped.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import generate_latest

from server.turn_metrics import TurnMetrics

PREFIX = "retserve"
# vLLM's buckets (vllm/v1/metrics/loggers.py); inter-token latency gains three below 10 ms,
# where CPU decode steps land
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
               0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics(TurnMetrics):
    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        labels, reg = ["model_name"], self.registry

        def histogram(name: str, doc: str, buckets) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, labels, registry=reg,
                             buckets=buckets).labels(model_name)

        def counter(name: str, doc: str) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=reg).labels(model_name)

        self.ttft = histogram("time_to_first_token_seconds", "Time to first token.",
                              TTFT_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between two tokens.",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end request latency.",
                             REQUEST_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Time waiting for a state slot.",
                               REQUEST_BUCKETS)
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens, those from stored "
                                     "states included.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens.")
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up in "
                                      "stored states.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens a stored state "
                                   "covered (not fed again).")
        self.refeed_tokens = counter("state_refeed_tokens", "Tokens fed again after a turn "
                                     "so that its stored state is exact (a sampled reply "
                                     "whose tokens are not its text's own tokenization).")
        self._success = Counter(f"{PREFIX}_request_success", "Finished requests by reason.",
                                ["model_name", "finished_reason"], registry=reg)
        self._store_errors = Counter(f"{PREFIX}_store_errors", "Store operations a turn went "
                                     "on without.", ["model_name", "operation"], registry=reg)
        self.http_requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route and "
                                     "status.", ["model_name", "route", "status"], registry=reg)
        ProcessCollector(namespace=PREFIX, registry=reg)  # resident memory, CPU, open fds

    def attach(self, read_engine: Callable[[], object], read_store: Callable[[], dict],
               state_bytes: int, is_store_up: Callable[[], bool],
               engine_pid: int | None = None) -> None:
        """Scrape-time figures of the loaded engine and store; with `engine_pid`, the engine
        process's memory and CPU as `retserve_engine_process_*`."""
        if engine_pid is not None:
            ProcessCollector(namespace=f"{PREFIX}_engine", pid=lambda: engine_pid,
                             registry=self.registry)
        self.registry.register(_LiveCollector(self.model_name, read_engine, read_store,
                                              state_bytes, is_store_up))

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # TurnMetrics

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def queued(self, seconds: float) -> None:
        self.queue.observe(seconds)

    def prefix_lookup(self, num_prompt_tokens: int, num_cached_tokens: int) -> None:
        self.prefix_queries.inc(num_prompt_tokens)
        self.prefix_hits.inc(num_cached_tokens)

    def finished(self, reason: str, seconds: float, num_prompt_tokens: int,
                 num_generated_tokens: int) -> None:
        self._success.labels(self.model_name, reason).inc()
        self.e2e.observe(seconds)
        self.prompt_tokens.inc(num_prompt_tokens)
        self.generation_tokens.inc(num_generated_tokens)

    def store_error(self, operation: str) -> None:
        self._store_errors.labels(self.model_name, operation).inc()

    def state_refeed(self, num_tokens: int) -> None:
        self.refeed_tokens.inc(num_tokens)


class _LiveCollector:
    def __init__(self, model_name, read_engine, read_store, state_bytes, is_store_up):
        self.model_name, self.read_engine, self.read_store = model_name, read_engine, read_store
        self.state_bytes, self.is_store_up = state_bytes, is_store_up

    def describe(self):
        return []  # unchecked: the families depend on what the store has counted

    def collect(self):
        m, label = self.model_name, [self.model_name]
        stats = self.read_engine()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=["model_name"])
            family.add_metric(label, value)
            return family

        yield gauge("num_requests_running", "Requests holding a state slot.", stats.num_running)
        yield gauge("num_requests_waiting", "Requests queued for a state slot.",
                    stats.num_waiting)
        yield gauge("state_slots_used", "State slots in use.", stats.num_slots_used)
        yield gauge("state_slots_total", "State slots preallocated.", stats.num_slots_total)
        yield gauge("state_slots_usage_ratio", "Share of state slots in use.",
                    stats.num_slots_used / max(1, stats.num_slots_total))
        yield gauge("state_pool_bytes", "Bytes of the preallocated state pool.",
                    stats.pool_bytes)
        yield gauge("state_bytes_per_session", "Bytes of one conversation's state: the same "
                    "for every conversation, whatever its length.", self.state_bytes)
        yield gauge("store_up", "1 while the state store answers.", int(self.is_store_up()))
        steps = CounterMetricFamily(f"{PREFIX}_engine_steps", "Engine steps.",
                                    labels=["model_name"])
        steps.add_metric(label, stats.num_steps)
        yield steps
        yield _batch_histogram(m, stats.decode_batch_sizes)
        yield from _store_families(m, self.read_store())


def _batch_histogram(model_name: str, counts: tuple[int, ...]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_decode_batch_size", "Decode rows per engine "
                                   "step.", labels=["model_name"])
    buckets, running = [], 0
    bounds = [b for b in BATCH_BUCKETS if b < len(counts)] + [float("inf")]
    size = 1
    for bound in bounds:
        while size < len(counts) and size <= bound:
            running += counts[size]
            size += 1
        buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
    total = sum(size * c for size, c in enumerate(counts))
    family.add_metric([model_name], buckets, total)
    return family


def _store_families(model_name: str, snapshot: dict):
    ops = CounterMetricFamily(f"{PREFIX}_store_operations", "State store operations.",
                              labels=["model_name", "backend", "op", "outcome"])
    latency = HistogramMetricFamily(f"{PREFIX}_store_operation_seconds", "State store "
                                    "operation latency.", labels=["model_name", "backend", "op"])
    refused = CounterMetricFamily(f"{PREFIX}_store_records_refused", "Stored records refused "
                                  "(never fed to the model), by reason.",
                                  labels=["model_name", "reason"])
    by_op: dict[tuple[str, str], list] = {}
    for op in snapshot["ops"]:
        ops.add_metric([model_name, op["backend"], op["op"], op["outcome"]], op["count"])
        merged = by_op.setdefault((op["backend"], op["op"]),
                                  [[0] * len(op["bucket_counts"]), 0.0])
        merged[0] = [a + b for a, b in zip(merged[0], op["bucket_counts"], strict=True)]
        merged[1] += op["total_seconds"]
    for (backend_name, op), (counts, total) in sorted(by_op.items()):
        bounds = [str(b) for b in snapshot["buckets"]] + ["+Inf"]
        cumulative, running = [], 0
        for bound, count in zip(bounds, counts, strict=True):
            running += count
            cumulative.append((bound, running))
        latency.add_metric([model_name, backend_name, op], cumulative, total)
    for reason, count in sorted(snapshot["refused"].items()):
        refused.add_metric([model_name, reason], count)
    yield ops
    yield latency
    yield refused
