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
from twopass.jobs.base import (
    DEFAULT_PAGE,
    OPEN_STATUSES,
    RETRYABLE_STATUSES,
    BatchRecord,
    IdempotencyRecord,
    JobRecord,
    JobStatus,
    JobStore,
    Start,
    WorkerBeat,
    check_page_size,
    decode_cursor,
    encode_cursor,
)


class MemoryJobStore(JobStore):
    #: Never waits on a network: the API calls it on the thread at hand (``ApiContext.inline_backends``).
    blocking = False

    def __init__(self, ttl_seconds: int = 7 * 24 * 3600) -> None:
        self.ttl_seconds = ttl_seconds
        self._jobs: dict[str, JobRecord] = {}
        self._beats: dict[str, WorkerBeat] = {}
        self._keys: dict[str, IdempotencyRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._lock = threading.Lock()
        self.final_writes: dict[str, int] = {}

    def create(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        with self._lock:
            if record.job_id in self._jobs:
                raise KeyError(f"job {record.job_id} exists")
            if idempotency is not None:
                if idempotency.key_hash in self._keys:
                    raise IdempotencyConflictError("idempotency key already used for another job")
                self._keys[idempotency.key_hash] = dataclasses.replace(idempotency, job_id=record.job_id)
            now = time.time()
            record.updated_at = record.updated_at or now
            if record.expires_at is None:
                record.expires_at = int(now + self.ttl_seconds)
            if record.final:  # answered at once: its event is owed from this very write
                record.event_owed = self._outbox_token()
            self._jobs[record.job_id] = copy.deepcopy(record)
        if record.final:  # answered at once (the result cache): final from its first write
            self._announce(copy.deepcopy(record))

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
            if record.status is JobStatus.QUEUED and record.past_deadline(now):
                return None
            record.status, record.started_at, record.updated_at = JobStatus.RUNNING, now, now
            record.worker = worker_id
            record.attempts += 1
            return copy.deepcopy(record)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        only_if_queued: bool = False,
        start: Start | None = None,
        run: int | None = None,
        **values: Any,
    ) -> bool:
        """A conditional write of a final state: only from queued|running (or from queued alone), only
        in ``run`` if given; records the event as owed when the writer holds no message."""
        token = self._outbox_token()
        with self._lock:
            record = self._jobs.get(job_id)
            allowed = {JobStatus.QUEUED} if only_if_queued else OPEN_STATUSES
            if record is None or record.status not in allowed or (run is not None and record.run != run):
                return False
            if start is not None:
                if record.status is JobStatus.QUEUED and record.past_deadline(start.at):
                    return False
                record.started_at, record.worker = start.at, start.worker_id
                record.attempts += 1
            now = time.time()
            record.status, record.finished_at, record.updated_at = status, now, now
            if token is not None:
                record.event_owed = token
            for name, value in values.items():
                setattr(record, name, value)
            self.final_writes[job_id] = self.final_writes.get(job_id, 0) + 1
            written = copy.deepcopy(record)
        self._announce(written)  # outside the lock: a listener may read the store
        return True

    def create_batch(self, batch: BatchRecord) -> None:
        with self._lock:
            if batch.expires_at is None:
                batch.expires_at = int(time.time() + self.ttl_seconds)
            self._batches[batch.batch_id] = copy.deepcopy(batch)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        with self._lock:
            batch = self._batches.get(batch_id)
            return None if batch is None or batch.expired() else copy.deepcopy(batch)

    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        return self._finish(job_id, JobStatus.SUCCEEDED, start=start, result=copy.deepcopy(result), error=None)

    def fail(
        self,
        job_id: str,
        error: str,
        *,
        only_if_queued: bool = False,
        start: Start | None = None,
        run: int | None = None,
    ) -> bool:
        return self._finish(job_id, JobStatus.FAILED, only_if_queued=only_if_queued, start=start, run=run, error=error)

    def cancel(self, job_id: str) -> bool:
        return self._finish(job_id, JobStatus.CANCELLED)

    def expire(self, job_id: str, reason: str) -> bool:
        return self._finish(job_id, JobStatus.EXPIRED, only_if_queued=True, error=reason)

    def keep_image(self, job_id: str, ref: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.image_ref is not None or record.status is JobStatus.SUCCEEDED:
                return False
            record.image_ref = ref
            return True

    def retry(self, job_id: str) -> bool:
        ended = self.get(job_id)
        if ended is not None and ended.final and ended.event_owed:  # the ended run's event must not be lost
            self.reannounce(ended)
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.status not in RETRYABLE_STATUSES or record.expired():
                return False
            now = time.time()
            record.history = [*record.history, record.outcome(now)]
            record.status, record.updated_at = JobStatus.QUEUED, now
            record.error = record.finished_at = record.deadline_at = record.result = None
            self.final_writes[job_id] = 0
            return True

    def list_jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        check_page_size(limit)
        after = None if cursor is None else decode_cursor(cursor)
        with self._lock:
            mine = [
                r
                for r in self._jobs.values()
                if r.owner == owner and not r.expired() and (status is None or r.status is status)
            ]
        # Newest first, as the table's index orders them (created_at, then job id, both descending).
        mine.sort(key=lambda r: (r.created_at, r.job_id), reverse=True)
        if after is not None:
            t, j = float(after[0]), after[1]
            mine = [r for r in mine if (r.created_at, r.job_id) < (t, j)]
        page = [copy.deepcopy(r) for r in mine[:limit]]
        more = len(mine) > limit
        return page, encode_cursor(repr(page[-1].created_at), page[-1].job_id) if more else None

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

    def owed_events(self, updated_before: float, limit: int = 100) -> list[JobRecord]:
        with self._lock:
            found = [
                copy.deepcopy(r)
                for r in self._jobs.values()
                if r.final and r.event_owed and (r.updated_at or 0.0) < updated_before and not r.expired()
            ]
        return sorted(found, key=lambda r: r.updated_at or 0.0)[:limit]

    def settle_event(self, job_id: str, token: str) -> bool:
        with self._lock:
            record = self._jobs.get(job_id)
            if record is None or record.event_owed != token:
                return False
            record.event_owed = None
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
