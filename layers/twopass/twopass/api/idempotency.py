"""Idempotency-Key: one key, one job, one answer — per owner.

A request carrying a key the owner used before gets the first answer again (``Idempotent-Replayed``);
the same key with another image is refused; while the first request is still running a retry is
told to come back. Keys are hashed together with the owner, so tenants never share (or probe) keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from typing import Any

from twopass.exceptions import (
    ConditionFailedError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    RequestInProgressError,
)
from twopass.jobs.base import IdempotencyRecord, JobStore


class Idempotency:
    """Claims, replays, remembers and releases idempotency keys in the job store."""

    def __init__(self, store: JobStore, ttl_seconds: float) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds

    def claim(self, key: str | None, owner: str, data: bytes) -> IdempotencyRecord | None:
        """The claim a request with ``key`` makes (``None`` without a key); validates the key."""
        if key is None:
            return None
        if not 1 <= len(key) <= 255 or not key.isprintable():
            raise InvalidRequestError("invalid_idempotency_key", "Idempotency-Key must be 1-255 printable characters")
        return IdempotencyRecord(
            key_hash=hashlib.sha256(f"{owner}\0{key}".encode()).hexdigest(),
            job_id="",
            body_hash=hashlib.sha256(data).hexdigest(),
            expires_at=int(time.time() + self.ttl_seconds),
        )

    def replay(self, claim: IdempotencyRecord) -> dict[str, Any] | None:
        """The answer already given for this key, if any."""
        previous = self.store.idempotency(claim.key_hash)
        if previous is None:
            return None
        if previous.body_hash != claim.body_hash:
            raise IdempotencyKeyReusedError("this Idempotency-Key was used with a different image")
        if previous.response is None:
            raise RequestInProgressError("a request with this Idempotency-Key is in progress; retry shortly")
        return previous.response

    def remember(self, claim: IdempotencyRecord, response: dict[str, Any]) -> None:
        """Keep the answer for replays (a claim that has expired meanwhile has nothing to keep)."""
        with contextlib.suppress(ConditionFailedError):
            self.store.remember_response(claim.key_hash, response)

    def forget(self, claim: IdempotencyRecord) -> None:
        """Release a key whose job could not be enqueued, so the client may retry with it."""
        self.store.forget_idempotency(claim.key_hash)
