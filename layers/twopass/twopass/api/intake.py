"""The enqueue path: a job's queue message, its record written, its message published, and the job
abandoned (marked failed, its idempotency key released) when either step fails."""

from __future__ import annotations

import logging

from twopass.api.idempotency import Idempotency
from twopass.config import Settings
from twopass.exceptions import DependencyError, ImageTooLargeError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStore, Priority
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher

logger = logging.getLogger(__name__)

#: Largest image sent inline without a bucket: SQS takes 1 MiB messages, base64 inflates by 4/3.
SQS_INLINE_LIMIT = 700 * 1024


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
        message = self.message(
            record.job_id, data, context, deadline_at=record.deadline_at, priority=record.priority, image_ref=image_ref
        )
        record.image_ref, record.context = message.image_ref, message.context
        try:
            self.store.create(record, idempotency)
        except DependencyError as exc:
            self.abandon(record.job_id, idempotency, f"the job could not be recorded: {exc}")
            raise
        return message

    def publish(self, message: JobMessage, idempotency: IdempotencyRecord | None = None) -> None:
        """Send the message of a recorded job (abandoning the job on failure)."""
        try:
            self.publisher_for(message.priority).publish(message)
        except DependencyError as exc:
            self.abandon(message.job_id, idempotency, f"could not enqueue: {exc}")
            raise

    def abandon(self, job_id: str, idempotency: IdempotencyRecord | None, reason: str) -> None:
        """Mark a job that will not run failed (only while still queued) and release its idempotency key."""
        try:
            self.store.fail(job_id, reason, only_if_queued=True)
            if idempotency is not None:
                self.idempotency.forget(idempotency)
        except DependencyError:
            logger.warning("job %s: %s; not marked failed either (the reconciler will)", job_id, reason)
