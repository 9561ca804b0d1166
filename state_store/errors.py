"""Typed errors of the state store.

Record errors mean "this state must not be fed to the model"; StoreUnavailable means "the backend
cannot answer now, serve without it"; ConflictError means "someone else moved the pointer first".
"""

from __future__ import annotations


class StateStoreError(Exception):
    """Base of every error the state store raises on purpose."""


class RecordError(StateStoreError):
    """A stored record was refused; `reason` is the counter label."""

    @property
    def reason(self) -> str:
        return type(self).__name__


class BadMagic(RecordError):
    """The bytes are not a state record at all."""


class UnknownVersion(RecordError):
    """A record format this build cannot read (written by a newer build)."""


class ChecksumMismatch(RecordError):
    """Header or body bytes changed after the record was written."""


class FingerprintMismatch(RecordError):
    """The state belongs to another model (or another checkpoint of it)."""


class TruncatedRecord(RecordError):
    """Fewer bytes than the header promises."""


class MalformedRecord(RecordError):
    """Checksum holds but the header is unusable: bad JSON, unknown dtype, body size vs shapes."""


class TenantMismatch(RecordError):
    """The record was written for another tenant (only tampering or a hash collision gets here)."""


class StoreUnavailable(StateStoreError):
    """The backend is down, too slow, or the circuit breaker is open."""


class ConflictError(StateStoreError):
    """A compare-and-set lost: the pointer is no longer what the caller last saw."""
