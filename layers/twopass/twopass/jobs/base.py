"""The job lifecycle and the small abstract store every backend implements.

queued → running → succeeded | failed. Every transition is conditional in the backend: a final
state never changes again, so duplicate deliveries and racing workers cannot overwrite a result.
"""

from __future__ import annotations

import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED})
OPEN_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})

#: The owner of jobs created while the API checks no keys.
ANONYMOUS = "anonymous"
#: Shards of the sparse "created, never started" index, so a burst of creates spreads over partitions.
PENDING_SHARDS = 8

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def new_job_id() -> str:
    """A random UUID4 as 32 hex characters: 122 random bits, unguessable and collision-free."""
    return uuid.uuid4().hex


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))


@dataclass
class JobRecord:
    """One job as stored; ``fast`` and ``result`` are ``{"model", "label", "top_k"}`` dicts."""

    job_id: str
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    fast: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    expires_at: int | None = None
    worker: str | None = None
    #: Who created the job (an API key's id, hashed locally); only they can read it.
    owner: str = ANONYMOUS
    #: ``s3://…`` of the claim-checked image while it is retained (lets a lost message be republished).
    image_ref: str | None = None
    #: What the queue message carries besides the image (request id, callback URL), kept so a job
    #: whose message was lost can be republished whole.
    context: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def expired(self, now: float | None = None) -> bool:
        # DynamoDB deletes expired items up to days late (and moto never does): reads must check.
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)


@dataclass(frozen=True)
class IdempotencyRecord:
    """What an ``Idempotency-Key`` maps to: its job, the body it was used with, the answer given."""

    key_hash: str
    job_id: str
    body_hash: str
    response: dict[str, Any] | None = None
    #: When the key is forgotten (epoch seconds); defaults to the job's own expiry.
    expires_at: int | None = None


@dataclass(frozen=True)
class WorkerBeat:
    """A worker's latest heartbeat."""

    worker_id: str
    at: float
    info: dict[str, Any] = field(default_factory=dict)

    def age(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) - self.at


class JobStore(ABC):
    """Where job records live. Transitions return ``False`` when the job's state forbids them."""

    @abstractmethod
    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        """Insert a new record (and its idempotency key, atomically).

        Idempotent against its own retries: a retried write that had in fact succeeded is success.
        Raises :class:`~twopass.exceptions.IdempotencyConflictError` when the key is already taken.
        """

    @abstractmethod
    def idempotency(self, key_hash: str) -> IdempotencyRecord | None:
        """The live record of an idempotency key, if any."""

    @abstractmethod
    def remember_response(self, key_hash: str, response: dict[str, Any]) -> None:
        """Store the answer given for an idempotency key, to replay it."""

    @abstractmethod
    def forget_idempotency(self, key_hash: str) -> None:
        """Release a key whose job could not be enqueued, so the client may retry with it."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` when unknown or expired."""

    @abstractmethod
    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        """queued|running → running, attempts + 1. ``None`` when the job is final or unknown."""

    @abstractmethod
    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """queued|running → succeeded with ``result``; ``False`` if it was already final."""

    @abstractmethod
    def fail(self, job_id: str, error: str, *, only_if_queued: bool = False) -> bool:
        """queued|running (or only queued) → failed with ``error``; ``False`` if not allowed."""

    @abstractmethod
    def reopen(self, job_id: str) -> bool:
        """failed → queued, for a redrive after a fix; succeeded jobs are never reopened."""

    @abstractmethod
    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        """Jobs still ``queued`` that no worker ever started, created before ``created_before``, oldest first."""

    @abstractmethod
    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        """Record that ``worker_id`` is alive now."""

    @abstractmethod
    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's heartbeat (clean shutdown)."""

    @abstractmethod
    def workers(self) -> list[WorkerBeat]:
        """Latest heartbeat of every worker that has not shut down cleanly."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`~twopass.exceptions.DependencyError` if the store is unreachable."""


def pending_shard(job_id: str) -> str:
    """The shard of ``job_id`` in the "created, never started" index."""
    return str(int(job_id[:2], 16) % PENDING_SHARDS)


def idempotency_key_id(key_hash: str) -> str:
    """Table key of an idempotency record: never a valid job id, so ``GET /job`` cannot read it."""
    return f"idem#{key_hash}"
