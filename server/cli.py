"""The `retserve` console script: one subcommand per module under server/commands/."""

from __future__ import annotations

import argparse
import importlib
import sys

from server.malloc_tuning import tune_malloc

# subcommand -> module defining `register(subparsers)`; imported lazily so `--help` stays fast
COMMANDS = {
    "serve": "server.commands.serve",
    "chat": "server.commands.chat",
    "bench": "server.commands.bench",
    "convert": "server.commands.convert",
    "train": "server.commands.train",
    "eval": "server.commands.eval",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before torch starts any thread
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
