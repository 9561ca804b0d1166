"""`retserve bench NAME [args]`: runs bench/NAME.py, whose `run(argv)` returns a JSON-able dict."""

from __future__ import annotations

import importlib
import json

BENCHMARKS = ("forms", "decode", "engine_memory", "store", "state_dtype", "weights_dtype", "turns",
              "constraints", "agents", "fuzz")


def register(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print JSON")
    p.add_argument("name", choices=BENCHMARKS)
    p.add_argument("args", nargs="...", help="arguments for the benchmark (see --help after NAME)")
    p.set_defaults(func=_run)


def _run(args) -> int:
    module = importlib.import_module(f"bench.{args.name}")
    argv = [a for a in args.args if a != "--json"]  # JSON is the only output format
    print(json.dumps(module.run(argv), indent=2))
    return 0
