"""The redis-server helper tests use (it lives with the benchmarks, which use it too)."""

from bench.redis_process import RedisServer, free_cluster_port, free_port, redis_answers

__all__ = ["RedisServer", "free_cluster_port", "free_port", "redis_answers"]
