"""Private redis-server processes for tests (the class lives with the benchmarks)."""

from bench.redis_process import RedisServer, free_cluster_port, free_port, redis_answers

__all__ = ["RedisServer", "free_cluster_port", "free_port", "redis_answers"]
