"""API keys -> tenants. Keys come from `--api-keys` (KEY or KEY:TENANT, comma-separated) and/or a
file of lines `KEY [TENANT]`; a key without a tenant is its own tenant (named by a hash of it).
No keys configured: every request belongs to one anonymous tenant.

Keys are kept only as SHA-256 digests and every digest is compared (hmac.compare_digest, no early
exit), so neither the response time nor a log line tells anything about a key.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from server.errors import unauthorized

ANONYMOUS_TENANT = "anonymous"
MAX_AUTHORIZATION_BYTES = 4096  # a bearer token is far shorter; refuse before hashing megabytes


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def tenant_hash(tenant: str) -> str:
    """A short stable name for logs: tenants are not secret, but need not be spelled out."""
    return hashlib.sha256(tenant.encode()).hexdigest()[:12]


class ApiKeys:
    def __init__(self, keys: dict[str, str]):
        """keys: API key -> tenant."""
        self._entries = [(_digest(k), t) for k, t in keys.items()]

    @classmethod
    def parse(cls, inline: str | None, file: Path | None) -> ApiKeys:
        lines = [item.strip() for item in (inline or "").split(",")]
        pairs = [line.split(":", 1) for line in lines if line]
        if file is not None:
            for line in file.read_text("utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    pairs.append(line.split(None, 1))
        keys = {}
        for pair in pairs:
            key = pair[0].strip()
            tenant = pair[1].strip() if len(pair) > 1 and pair[1].strip() else None
            if len(key) < 8:
                raise ValueError("API keys must be at least 8 characters")
            keys[key] = tenant or f"key-{tenant_hash(key)}"
        return cls(keys)

    @property
    def is_enabled(self) -> bool:
        return bool(self._entries)

    def tenant_for(self, authorization: str | None) -> str:
        """The tenant of an `Authorization: Bearer KEY` header; APIError 401 otherwise."""
        if not self._entries:
            return ANONYMOUS_TENANT
        if not authorization or len(authorization) > MAX_AUTHORIZATION_BYTES:
            raise unauthorized("missing or invalid Authorization header (Bearer API key)")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise unauthorized("the Authorization header must be 'Bearer <API key>'")
        given = _digest(key.strip())
        found = None
        for digest, tenant in self._entries:  # all of them: the time does not depend on a match
            if hmac.compare_digest(digest, given):
                found = tenant
        if found is None:
            raise unauthorized("invalid API key")
        return found
