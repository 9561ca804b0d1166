"""The server process helper tests use (it lives with the benchmarks, which use it too)."""

from bench.server_process import MODEL_NAME, ServerProcess

__all__ = ["MODEL_NAME", "ServerProcess"]
