"""Schemathesis hooks for fuzzing retserve (loaded through SCHEMATHESIS_HOOKS by bench/api_fuzz).

Generated bodies name a random model, so alone they would all end at the 404 for an unknown
model and never reach a turn: three bodies in four that name a model (a string) are steered to
the served one with token counts within the server's limits, half the path ids to a session
and a response made before the run (choices by a hash of the case, so a seed replays them), and,
when the server has API keys, three requests in four of each operation carry the right one. The
rest stay as generated (a generated Authorization header is a 401). One check is added to the
standard ones: every 4xx is OpenAI's error shape.
"""

from __future__ import annotations

import collections
import json
import os
import zlib

import schemathesis

MODEL = os.environ.get("RETSERVE_FUZZ_MODEL", "retnet-tiny-chat")
KNOWN_IDS = {"session_id": os.environ.get("RETSERVE_FUZZ_SESSION", ""),
             "response_id": os.environ.get("RETSERVE_FUZZ_RESPONSE", ""),
             "model_id": MODEL}
API_KEY = os.environ.get("RETSERVE_FUZZ_API_KEY")
# at most what the fuzzed server allows (bench/api_fuzz starts it with these limits)
MAX_TOKENS, MAX_N = 8, 2
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_cases_seen: collections.Counter = collections.Counter()  # per (method, path)


def _share(value, out_of: int) -> bool:
    """One case in `out_of`, picked by a hash of the case."""
    return zlib.crc32(json.dumps(value, sort_keys=True, default=repr).encode()) % out_of == 0


def _steer_body(body):
    if not isinstance(body, dict) or type(body.get("model")) is not str or _share(body, 4):
        return body
    body = {**body, "model": MODEL}
    for name in _TOKEN_FIELDS:  # only lowered: zero and negative counts stay to be refused
        if type(body.get(name)) is int and body[name] > MAX_TOKENS:
            body[name] = MAX_TOKENS
    if type(body.get("n")) is int and body["n"] > MAX_N:
        body["n"] = MAX_N
    return body


def _steer_ids(params):
    if not isinstance(params, dict) or _share(params, 2):
        return params
    return {k: KNOWN_IDS.get(k) or v for k, v in params.items()}


@schemathesis.hook
def map_case(context, case):
    # every phase's cases pass here (map_body would miss the coverage phase's)
    case.body = _steer_body(case.body)
    if case.path_parameters:
        case.path_parameters = _steer_ids(case.path_parameters)
    if API_KEY:
        # every fourth case of each operation keeps its own headers: by count, not by a hash of
        # the case, since an operation's cases are often alike (the same steered id, "0")
        seen = _cases_seen[(case.method, case.path)]
        _cases_seen[(case.method, case.path)] += 1
        if seen % 4 != 3:
            case.headers = {**(case.headers or {}), "authorization": f"Bearer {API_KEY}"}
    return case


@schemathesis.check
def openai_error_shape(ctx, response, case):
    """A 4xx says what was refused the way OpenAI does: {"error": {message, type, param,
    code}} with a non-empty message."""
    if not 400 <= response.status_code < 500:
        return None
    try:
        error = json.loads(response.content)["error"]
    except (ValueError, KeyError, TypeError) as e:
        raise AssertionError(f"{response.status_code} is not an OpenAI error: "
                             f"{response.content[:200]!r}") from e
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        raise AssertionError(f"error object keys {sorted(error)} are not OpenAI's")
    if not isinstance(error["message"], str) or not error["message"]:
        raise AssertionError("the error has no message")
    return None
