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
from twopass.jobs.base import IdempotencyRecord, JobStatus, JobStore

#: A job in one of these never ran to an answer, so the key of a request that was refused can be reused.
_ENDED_UNANSWERED = frozenset({JobStatus.FAILED, JobStatus.EXPIRED, JobStatus.CANCELLED})
#: Seconds after its job ended that a key held without an answer is free again: longer than the API's
#: clean-up of a refused request keeps trying (``twopass.api.usecases.submit.COMPENSATE_FOR``) plus its last
#: call, so a late release from that clean-up can never delete the claim of the request that reused it.
RELEASE_AFTER_SECONDS = 90.0


class Idempotency:
    """Claims, replays, remembers and releases idempotency keys in the job store."""

    def __init__(self, store: JobStore, ttl_seconds: float, release_after: float = RELEASE_AFTER_SECONDS) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.release_after = release_after

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
            if self._dead(previous):
                self.forget(claim)  # its request was refused and its job ended: the key is free again
                return None
            raise RequestInProgressError("a request with this Idempotency-Key is in progress; retry shortly")
        return previous.response

    def _dead(self, held: IdempotencyRecord) -> bool:
        """Whether a key held without an answer belongs to a job that ended without running, a while ago.

        Its request was refused (503) and its job failed (by the API's clean-up or the reconciler), but
        the key's release never got through (the store went away for longer than the clean-up tried):
        the key would answer 409 until it expires otherwise. Costs a read only for a key in progress.
        """
        job = self.store.get(held.job_id) if held.job_id else None
        if job is None or job.status not in _ENDED_UNANSWERED:
            return False
        return time.time() - (job.finished_at or job.updated_at or job.created_at) >= self.release_after

    def remember(self, claim: IdempotencyRecord, response: dict[str, Any]) -> None:
        """Keep the answer for replays (a claim that has expired meanwhile has nothing to keep)."""
        with contextlib.suppress(ConditionFailedError):
            self.store.remember_response(claim.key_hash, response)

    def forget(self, claim: IdempotencyRecord) -> None:
        """Release a key whose job could not be enqueued, so the client may retry with it."""
        self.store.forget_idempotency(claim.key_hash)
