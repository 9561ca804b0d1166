"""`retserve serve`: the OpenAI-compatible HTTP server. Every setting is a flag (and an
environment variable RETSERVE_<NAME>); flags win."""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

# flags whose names differ from their setting's
ALIASES = {"store_url": ["--store"]}


def register(sub) -> None:
    from server.settings import Settings  # pydantic only: keeps `retserve --help` quick

    p = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, field in Settings.model_fields.items():
        flags = ALIASES.get(name, []) + ["--" + name.replace("_", "-")]
        env = f"RETSERVE_{name.upper()}"
        help_text = f"{field.description or ''} (env {env})".strip()
        kind = _flag_type(field.annotation)
        if kind is bool:
            p.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                           default=None, help=help_text)
        else:
            p.add_argument(*flags, dest=name, type=kind, default=None, help=help_text,
                           choices=_choices(field.annotation))
    p.set_defaults(func=_run)


def _flag_type(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    first = args[0]
    if typing.get_origin(first) is typing.Literal:
        return str
    if first in (bool, int, float, Path):
        return first
    return str


def _choices(annotation):
    for arg in [annotation, *typing.get_args(annotation)]:
        if typing.get_origin(arg) is typing.Literal:
            return list(typing.get_args(arg))
    return None


def _run(args) -> int:
    from pydantic import ValidationError

    from server.settings import Settings

    given = {name: getattr(args, name) for name in Settings.model_fields
             if getattr(args, name, None) is not None}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        print(f"retserve serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    from server.app import create_app
    from server.logs import configure_logging
    from server.serving import serve

    configure_logging(settings.log_format, settings.log_level)
    serve(create_app(settings), settings)
    return 0
