"""In-process job store with the same conditional semantics as DynamoDB (benchmarks, unit tests).

``final_writes`` mirrors the DynamoDB item attribute of the same name: how often each job was
written final, which a correct store never lets exceed one.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from typing import Any

from twopass.exceptions import IdempotencyConflictError
from twopass.jobs.base import OPEN_STATUSES, IdempotencyRecord, JobRecord, JobStatus, JobStore, WorkerBeat


class MemoryJobStore(JobStore):
    def __init__(self, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.ttl_seconds = ttl_seconds
        self._jobs: dict[str, JobRecord] = {}
        self._beats: dict[str, WorkerBeat] = {}
        self._keys: dict[str, IdempotencyRecord] = {}
        self._lock = threading.Lock()
        self.final_writes: dict[str, int] = {}

    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        with self._lock:
            if record.job_id in self._jobs:
                raise KeyError(f"job {record.job_id} exists")
            if idempotency is not None:
                if idempotency.key_hash in self._keys:
                    raise IdempotencyConflictError("idempotency key already used for another job")
                self._keys[idempotency.key_hash] = idempotency
            now = time.time()
            record.updated_at = record.updated_at or now
            if record.expires_at is None:
                record.expires_at = int(now + self.ttl_seconds)
            self._jobs[record.job_id] = copy.deepcopy(record)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(job_id)
            return None if record is None or record.expired() else copy.deepcopy(record)

    def start(self, job_id: str, worker_id: str) -> JobRecord | None:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.status not in OPEN_STATUSES:
                return None
            now = time.time()
            record.status, record.started_at, record.updated_at = JobStatus.RUNNING, now, now
            record.worker = worker_id
            record.attempts += 1
            return copy.deepcopy(record)

    def _finish(self, job_id: str, status: JobStatus, *, only_if_queued: bool = False, **values: Any) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            allowed = {JobStatus.QUEUED} if only_if_queued else OPEN_STATUSES
            if record is None or record.status not in allowed:
                return False
            now = time.time()
            record.status, record.finished_at, record.updated_at = status, now, now
            for name, value in values.items():
                setattr(record, name, value)
            self.final_writes[job_id] = self.final_writes.get(job_id, 0) + 1
            return True

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        return self._finish(job_id, JobStatus.SUCCEEDED, result=copy.deepcopy(result), error=None)

    def fail(self, job_id: str, error: str, *, only_if_queued: bool = False) -> bool:
        return self._finish(job_id, JobStatus.FAILED, only_if_queued=only_if_queued, error=error)

    def idempotency(self, key_hash: str) -> IdempotencyRecord | None:
        with self._lock:
            return self._keys.get(key_hash)

    def remember_response(self, key_hash: str, response: dict[str, Any]) -> None:
        with self._lock:
            if key_hash in self._keys:
                self._keys[key_hash] = dataclasses.replace(self._keys[key_hash], response=copy.deepcopy(response))

    def forget_idempotency(self, key_hash: str) -> None:
        with self._lock:
            self._keys.pop(key_hash, None)

    def reopen(self, job_id: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.status is not JobStatus.FAILED:
                return False
            record.status, record.error, record.finished_at = JobStatus.QUEUED, None, None
            record.updated_at = time.time()
            self.final_writes[job_id] = 0
            return True

    def never_started(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        with self._lock:
            found = [
                copy.deepcopy(r)
                for r in self._jobs.values()
                if r.status is JobStatus.QUEUED and not r.attempts and r.created_at < created_before and not r.expired()
            ]
        return sorted(found, key=lambda r: r.created_at)[:limit]

    def beat(self, worker_id: str, info: dict[str, Any]) -> None:
        with self._lock:
            self._beats[worker_id] = WorkerBeat(worker_id, time.time(), dict(info))

    def forget_worker(self, worker_id: str) -> None:
        with self._lock:
            self._beats.pop(worker_id, None)

    def workers(self) -> list[WorkerBeat]:
        with self._lock:
            return sorted(self._beats.values(), key=lambda b: b.at, reverse=True)

    def ping(self) -> None:
        return None
