"""The memory probe: what the servers' /metrics and Redis `INFO memory` say at one moment."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per scrape otherwise

# retserve's /metrics names (server/metrics.py) this probe reads, summed over replicas
SERVER_GAUGES = {
    "retserve_process_resident_memory_bytes": "server_rss_bytes",
    "retserve_engine_process_resident_memory_bytes": "server_rss_bytes",  # its engine process
    "retserve_num_requests_running": "num_requests_running",
    "retserve_num_requests_waiting": "num_requests_waiting",
    "retserve_state_slots_used": "state_slots_used",
}


@dataclass
class Sample:
    t: float  # seconds since the probe started
    server_rss_bytes: float = 0.0
    num_requests_running: float = 0.0
    num_requests_waiting: float = 0.0
    state_slots_used: float = 0.0
    redis_used_memory: int = 0
    redis_keys: int = 0

    def row(self) -> dict:
        return asdict(self)


def server_gauges(url: str, timeout: float = 15.0) -> dict[str, float]:
    """The gauges of SERVER_GAUGES from one replica's /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=timeout).text
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in SERVER_GAUGES:
                found[SERVER_GAUGES[s.name]] = found.get(SERVER_GAUGES[s.name], 0.0) + s.value
    return found


class Probe:
    def __init__(self, server_urls: list[str], redis_url: str | None):
        self.server_urls = server_urls
        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.started = time.monotonic()

    def sample(self, reclaim_expired: bool = False) -> Sample:
        """`reclaim_expired`: SCAN the keyspace first. Redis frees expired keys lazily and by
        random sampling, which leaves up to ~10% of the keys with an expiry dead but counted;
        a SCAN deletes every expired key it passes, so the figures are those of live keys."""
        sample = Sample(t=round(time.monotonic() - self.started, 3))
        for url in self.server_urls:
            for name, value in server_gauges(url).items():
                setattr(sample, name, getattr(sample, name) + value)
        if self.redis is not None:
            if reclaim_expired:
                for _ in self.redis.scan_iter(count=1000):
                    pass
            sample.redis_used_memory = int(self.redis.info("memory")["used_memory"])
            sample.redis_keys = int(self.redis.dbsize())
        return sample
