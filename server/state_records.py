"""The edge between the engine's states and the store's records: a one-row RetentionState <->
StateRecord. A record is checked against this model before it is used: its tensors must be
exactly the model's state tensors and every value finite (a NaN in a state poisons every later
token of its conversation), else a RecordError, and the caller serves a miss."""

from __future__ import annotations

import time

import torch

from engine.config import ModelConfig
from engine.dtypes import dtype_from_name, dtype_name
from engine.state import RetentionState
from state_store import MalformedRecord, StateRecord

STATE_DTYPES = ("float32", "bfloat16", "float16", "float64")


def record_from_state(state: RetentionState, model_fingerprint: str,
                      dtype: torch.dtype | None = None) -> StateRecord:
    """The record of a one-row state; `dtype` casts the stored bytes (fp16/bf16 halve them)."""
    now = time.time()
    return StateRecord(
        model_fingerprint=model_fingerprint, dtype=dtype_name(dtype or state.kv.dtype),
        tensors=tuple(state.tensor_spec()), num_tokens=int(state.num_tokens[0]),
        body=state.to_bytes(dtype), created_at=now, updated_at=now)


def state_from_record(record: StateRecord, config: ModelConfig,
                      out_dtype: torch.dtype = torch.float32) -> RetentionState:
    """The state a record holds, refused (MalformedRecord) unless it fits this model."""
    expected = tuple(RetentionState.empty(config, 1, device="meta").tensor_spec())
    if record.tensors != expected:
        raise MalformedRecord(f"record tensors {record.tensors[:2]}... are not this model's "
                              f"state ({expected[:2]}...)")
    if record.dtype not in STATE_DTYPES:
        raise MalformedRecord(f"state dtype {record.dtype!r} is not a float type")
    state = RetentionState.from_bytes(record.body, config, record.num_tokens,
                                      dtype_from_name(record.dtype), out_dtype=out_dtype)
    if not all(torch.isfinite(t).all() for t in state.tensors):
        raise MalformedRecord("state holds NaN or infinite values")
    return state
