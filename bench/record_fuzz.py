"""Forged state records, each wrong by construction, through the reader a replica uses
(decode_record, then state_from_record against the model): every one must be refused with a
RecordError. Families, from a real state of the model:

- forged_header: one header field set to a value the schema forbids (or removed), with a
  correct checksum over the forged bytes;
- flipped_byte / truncated / random_bytes: damage a checksum or the layout catches;
- poisoned_state: a valid header and checksum over a state that is not this model's (NaN or
  infinite values, shapes permuted or flattened, an integer dtype).

`accepted_bad` counts records that got through; `crashed` any other exception."""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import struct

import numpy as np
import torch
import xxhash

from engine.checkpoint import load_model
from server.state_records import record_from_state, state_from_record
from state_store import RecordError, decode_record, encode_record

# values the header schema forbids, by field (state_store/record.py)
BAD_VALUES = {
    "model_fingerprint": ["", 5, None, {}, ["ab"]],
    "dtype": ["float33", 5, None, "", ["float32"]],
    "num_tokens": ["abc", -1, 1e300, True, None, 2**41, [1], 1.5, {}],
    "tenant": [{}, 5, None, ["a"], True],
    "created_at": ["x", -1, 1e300, True, None, [], {}],
    "updated_at": ["x", -1.5, 1e300, False, None],
    "tensors": [{}, [], "x", None, [["a"]], [[1, [2]]], [["", [2]]], [["a", "2"]],
                [["a", [1]], ["a", [1]]]],
}
BAD_DIMS = [-1, 0, "3", 1.5, 2**41, True, None, [2]]


@dataclasses.dataclass
class RecordFuzzResult:
    tried: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    accepted_bad: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    crashed: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        return {"tried": sum(self.tried.values()), "refused": sum(self.refused.values()),
                "accepted_bad": sum(self.accepted_bad.values()),
                "crashed": sum(self.crashed.values()),
                "by_family": {family: {"tried": n, "refused": self.refused[family],
                                       "accepted_bad": self.accepted_bad[family],
                                       "crashed": self.crashed[family]}
                              for family, n in sorted(self.tried.items())},
                "examples_accepted_or_crashed": self.examples[:10]}


def _forge(header: dict, body: bytes) -> bytes:
    """Record bytes with a correct checksum over the given header and body (codec layout)."""
    head = json.dumps(header).encode()
    prefix = struct.pack("<4sHHIQ", b"RSST", 1, 0, len(head), len(body))
    digest = xxhash.xxh3_64(prefix + head + body).intdigest()
    return prefix + struct.pack("<Q", digest) + head + body


def _forged_headers(header: dict, body: bytes, rng: random.Random):
    field = rng.choice([*BAD_VALUES, "dims", "missing"])
    forged = json.loads(json.dumps(header))
    if field == "missing":
        del forged[rng.choice(["model_fingerprint", "dtype", "tensors", "num_tokens"])]
    elif field == "dims":
        spec = rng.choice(forged["tensors"])
        spec[1][rng.randrange(len(spec[1]))] = rng.choice(BAD_DIMS)
    else:
        forged[field] = rng.choice(BAD_VALUES[field])
    return _forge(forged, body)


def _flipped_byte(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    out[rng.randrange(len(out))] ^= rng.randrange(1, 256)
    return bytes(out)


def _truncated(data: bytes, rng: random.Random) -> bytes:
    return data[:rng.randrange(len(data))]


def _random_bytes(data: bytes, rng: random.Random) -> bytes:
    return b"RSST" * rng.randrange(2) + rng.randbytes(rng.randrange(1, 256))


def _poisoned(record, rng: random.Random):
    kind = rng.choice(["nan", "inf", "permuted", "flattened", "int32"])
    if kind in ("nan", "inf"):
        values = np.frombuffer(record.body, dtype=np.float32).copy()
        values[rng.randrange(len(values))] = np.nan if kind == "nan" else rng.choice(
            [np.inf, -np.inf])
        return dataclasses.replace(record, body=values.tobytes())
    if kind == "permuted":
        i = rng.randrange(len(record.tensors))
        name, shape = record.tensors[i]
        changed = (name, tuple(reversed(shape)) if len(set(shape)) > 1 else (*shape, 1))
        return dataclasses.replace(record, tensors=(*record.tensors[:i], changed,
                                                    *record.tensors[i + 1:]))
    if kind == "flattened":
        return dataclasses.replace(record, tensors=tuple(
            (name, (int(np.prod(shape)),)) for name, shape in record.tensors))
    return dataclasses.replace(record, dtype="int32")


def run_record_fuzz(num_records: int, seed: int = 0) -> RecordFuzzResult:
    rng = random.Random(seed)
    model = load_model()
    with torch.inference_mode():
        _, state = model.prefill(torch.tensor([[1, 2, 3, 4, 5]]), return_logits=False)
    record = record_from_state(state, model.fingerprint)
    good = encode_record(record)
    header = json.loads(good[28:28 + struct.unpack_from("<I", good, 8)[0]])
    body = record.body
    result = RecordFuzzResult()
    families = ["forged_header", "flipped_byte", "truncated", "random_bytes", "poisoned_state"]
    for i in range(num_records):
        family = families[i % len(families)]
        if family == "forged_header":
            data = _forged_headers(header, body, rng)
        elif family == "flipped_byte":
            data = _flipped_byte(good, rng)
        elif family == "truncated":
            data = _truncated(good, rng)
        elif family == "random_bytes":
            data = _random_bytes(good, rng)
        else:
            data = encode_record(_poisoned(record, rng))
        result.tried[family] += 1
        try:
            state_from_record(decode_record(data, model.fingerprint), model.config)
        except RecordError:
            result.refused[family] += 1
        except Exception as e:  # noqa: BLE001 - any other exception is what is counted here
            result.crashed[family] += 1
            result.examples.append(f"{family}: {type(e).__name__}: {e}"[:300])
        else:
            result.accepted_bad[family] += 1
            result.examples.append(f"{family}: accepted {data[:200]!r}")
    return result
