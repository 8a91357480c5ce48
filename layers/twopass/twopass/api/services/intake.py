"""The enqueue path: a job's queue message, its record written, its message published, and the job
abandoned (marked failed, its idempotency key released) when either step fails.

A step that timed out may still land later (the emulator or the service was only slow), so
:meth:`JobIntake.abandon` leaves nothing for such a write to complete: a record not written yet is
written failed in its place (a late create then finds the id taken and fails whole, its idempotency
key with it); a late publish finds its job failed, and the worker drops it; a late ``remember`` finds
the key gone.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from twopass.api.services.idempotency import Idempotency
from twopass.config import Settings
from twopass.exceptions import ConditionFailedError, DependencyError, ImageTooLargeError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStatus, JobStore, Priority
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher

logger = logging.getLogger(__name__)

#: Largest image sent inline without a bucket: SQS takes 1 MiB messages, base64 inflates by 4/3.
SQS_INLINE_LIMIT = 700 * 1024
#: Rounds of fail / read / write-failed-in-its-place while a late write keeps landing in between.
_END_ROUNDS = 3


class JobIntake:
    """Records jobs and sends them to the queue of their priority."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        publisher: JobPublisher,
        high_priority_publisher: JobPublisher | None,
        payloads: PayloadStore,
        idempotency: Idempotency,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.high_priority_publisher = high_priority_publisher
        self.payloads = payloads
        self.idempotency = idempotency

    def priority(self, requested: str | None) -> str:
        """The priority a job gets: ``high`` only where there is a high-priority queue to carry it."""
        if requested == Priority.HIGH and self.high_priority_publisher is not None:
            return Priority.HIGH.value
        return Priority.NORMAL.value

    def publisher_for(self, priority: str) -> JobPublisher:
        if priority == Priority.HIGH and self.high_priority_publisher is not None:
            return self.high_priority_publisher
        return self.publisher

    def message(
        self,
        job_id: str,
        data: bytes,
        context: dict[str, str] | None = None,
        *,
        deadline_at: float | None = None,
        priority: str = Priority.NORMAL.value,
        image_ref: str | None = None,
    ) -> JobMessage:
        """The queue message for a job: the image inline, or a claim check for a big one.

        ``image_ref``: the image is already in the bucket (an upload); the message refers to it as it is.
        """
        if image_ref is None:
            image_ref = self._claim_check(job_id, data)
        return JobMessage(
            job_id=job_id,
            image=None if image_ref is not None else data,
            image_ref=image_ref,
            context=dict(context or {}),
            deadline_at=deadline_at,
            priority=priority,
        )

    def _claim_check(self, job_id: str, data: bytes) -> str | None:
        """Where a big image was put in the bucket; ``None``: the image travels inline."""
        if len(data) <= self.settings.inline_image_bytes:
            return None
        if self.settings.payload_bucket:
            return self.payloads.put(self.settings.payload_bucket, job_id, data)
        if len(data) <= SQS_INLINE_LIMIT:
            return None
        raise ImageTooLargeError(
            f"the image is {len(data)} bytes; without a payload bucket the limit is {SQS_INLINE_LIMIT} bytes"
        )

    def record_job(
        self,
        record: JobRecord,
        data: bytes,
        context: dict[str, str] | None = None,
        idempotency: IdempotencyRecord | None = None,
        image_ref: str | None = None,
    ) -> JobMessage:
        """Write the record (abandoning the job on failure); returns the message :meth:`publish` sends."""
        message = self.prepare(record, data, context, image_ref)
        try:
            self.write(record, idempotency)
        except DependencyError as exc:
            self.abandon(record.job_id, idempotency, f"the job could not be recorded: {exc}", record=record)
            raise
        return message

    def prepare(
        self, record: JobRecord, data: bytes, context: dict[str, str] | None = None, image_ref: str | None = None
    ) -> JobMessage:
        """The job's message (a big image put in the bucket first), its claim check noted on ``record``.

        Writes no record: a failure here leaves no job to end.
        """
        message = self.message(
            record.job_id, data, context, deadline_at=record.deadline_at, priority=record.priority, image_ref=image_ref
        )
        record.image_ref, record.context = message.image_ref, message.context
        return message

    def write(self, record: JobRecord, idempotency: IdempotencyRecord | None = None) -> None:
        """Create the record (and claim its idempotency key, atomically); no compensation here."""
        self.store.create(record, idempotency)

    def publish(self, message: JobMessage, idempotency: IdempotencyRecord | None = None) -> None:
        """Send the message of a recorded job (abandoning the job on failure)."""
        try:
            self.send(message)
        except DependencyError as exc:
            self.abandon(message.job_id, idempotency, f"could not enqueue: {exc}")
            raise

    def send(self, message: JobMessage) -> None:
        """Publish a recorded job's message to its priority's queue; no compensation here."""
        self.publisher_for(message.priority).publish(message)

    def abandon(
        self,
        job_id: str,
        idempotency: IdempotencyRecord | None,
        reason: str,
        *,
        record: JobRecord | None = None,
        response: dict[str, Any] | None = None,
    ) -> bool:
        """End a job that will not run and release its idempotency key; ``False`` when the store could
        not be reached (nothing certain was written: call again, or leave it to the reconciler).

        The job is marked failed while still queued. With ``record``, a job whose record is not there
        yet is written failed in its place, so that a create still on its way cannot land after this.
        A job a worker has already taken (so its message was published) runs on: its key then keeps
        ``response``, the answer the client was going to get, or is released without one.
        """
        try:
            ended = self._end(job_id, reason, record)
            if idempotency is not None:
                if not ended and response is not None:
                    self.idempotency.remember(idempotency, response)
                else:
                    self.idempotency.forget(idempotency)
        except DependencyError:
            logger.warning("job %s: %s; not marked failed either (the reconciler will)", job_id, reason)
            return False
        if ended:
            logger.warning("job %s abandoned: %s", job_id, reason)
        return True

    def _end(self, job_id: str, reason: str, record: JobRecord | None) -> bool:
        """Mark the job failed; ``True`` once it cannot run (failed now or ended before), ``False`` when a
        worker has it or it has succeeded."""
        for _ in range(_END_ROUNDS):
            if self.store.fail(job_id, reason, only_if_queued=True):
                return True
            current = self.store.get(job_id)
            if current is None:
                if record is None or self._write_failed(record, reason):
                    return True
                continue  # the create landed meanwhile: fail that
            if current.status is not JobStatus.QUEUED:
                return current.status not in (JobStatus.RUNNING, JobStatus.SUCCEEDED)
        # Queued at every read yet refused at every fail: nothing is certain, so the caller tries again.
        raise DependencyError(f"job {job_id} could not be marked failed")

    def _write_failed(self, record: JobRecord, reason: str) -> bool:
        """Write the job failed under its id unless a record is there; ``False`` when one was."""
        now = time.time()
        failed = dataclasses.replace(
            record, status=JobStatus.FAILED, error=reason, finished_at=now, updated_at=now, result=None
        )
        try:
            self.store.create(failed)
        # DynamoDB refuses the conditional put; the in-memory twin raises KeyError for an id it holds.
        except (ConditionFailedError, KeyError):
            return False
        return True
