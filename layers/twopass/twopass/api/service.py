"""What the API does, independent of HTTP: classify fast, record and enqueue the job, read it back."""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twopass.api.idempotency import Idempotency
from twopass.config import DATA_DIR, Settings
from twopass.exceptions import DependencyError, EnqueueError, ImageTooLargeError, JobNotFoundError, ModelLoadError
from twopass.jobs.base import (
    DEFAULT_PAGE,
    RETRYABLE_STATUSES,
    IdempotencyRecord,
    ImageGoneError,
    JobFinalError,
    JobNotRetryableError,
    JobRecord,
    JobStatus,
    JobStore,
    Priority,
    WorkerBeat,
)
from twopass.models.card import ModelCard, card_path
from twopass.models.runtime import Classifier, Prediction
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher
from twopass.uploads import Uploads

if TYPE_CHECKING:
    from twopass.api.shortcuts import Shortcuts

logger = logging.getLogger(__name__)

SAMPLE_IMAGE = DATA_DIR / "cat.jpg"
#: Largest image sent inline without a bucket: SQS takes 1 MiB messages, base64 inflates by 4/3.
SQS_INLINE_LIMIT = 700 * 1024


class TwopassService:
    """The fast path and job bookkeeping; the FastAPI routes are a thin layer over this."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        publisher: JobPublisher,
        classifier: Classifier | None = None,
        *,
        payloads: PayloadStore | None = None,
        high_priority_publisher: JobPublisher | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        #: Where high-priority jobs go; ``None``: no such queue, every job travels through ``publisher``.
        self.high_priority_publisher = high_priority_publisher
        self.payloads = payloads or PayloadStore()
        self.idempotency = Idempotency(store, min(settings.idempotency_ttl_hours * 3600, settings.job_ttl_seconds))
        if classifier is not None:
            self.__dict__["classifier"] = classifier

    @classmethod
    def from_settings(cls, settings: Settings) -> TwopassService:
        """DynamoDB, SQS and S3 backends named by ``settings``, with the request path's time budget."""
        from twopass import aws
        from twopass.jobs.dynamodb import DynamoJobStore
        from twopass.queue.sqs import SqsPublisher

        settings.require("queue_url", "table_name")
        budget = aws.request_budget(settings.api_call_timeout_seconds)
        sqs = aws.client("sqs", budget)
        high = settings.high_priority_queue_url
        store = DynamoJobStore(settings.table_name, settings.job_ttl_seconds, client=aws.client("dynamodb", budget))
        if settings.event_bus:  # final states written here (cancel, cascade, abandon) are announced at once
            from twopass.notify.events import attach
            from twopass.observability.metrics import MetricsSink

            metrics = MetricsSink(service="twopass-api")
            attach(store, settings.event_bus, metrics=metrics, background=False, client=aws.client("events", budget))
        return cls(
            settings,
            store,
            SqsPublisher(settings.queue_url, client=sqs),
            payloads=PayloadStore(aws.client("s3", budget) if settings.payload_bucket else None),
            high_priority_publisher=SqsPublisher(high, client=sqs) if high else None,
        )

    @cached_property
    def classifier(self) -> Classifier:
        return Classifier.from_location(
            self.settings.fast_model,
            providers=self.settings.providers,
            intra_op_threads=self.settings.intra_op_threads,
            top_k=self.settings.top_k,
        )

    @cached_property
    def uploads(self) -> Uploads | None:
        """Presigned uploads into the payload bucket; ``None`` without one (``POST /uploads`` is then a 501)."""
        if not self.settings.payload_bucket:
            return None
        return Uploads(
            self.payloads,
            self.settings.payload_bucket,
            max_bytes=self.settings.upload_max_bytes,
            expiry_seconds=round(self.settings.upload_expiry_minutes * 60),
        )

    @cached_property
    def shortcuts(self) -> Shortcuts:
        """The cascade and the result cache (jobs answered without a slow pass)."""
        from twopass.api.shortcuts import Shortcuts

        return Shortcuts(self)

    def warm_up(self) -> None:
        """Load the fast model now rather than on first use (Lambda init runs at full CPU, and SnapStart keeps it)."""
        _ = self.classifier

    @property
    def fast_name(self) -> str:
        return self.classifier.name

    # -- fast path ---------------------------------------------------------------------------

    def decode(self, data: bytes, max_bytes: int | None = None) -> np.ndarray:
        """Validate and preprocess; raises ``InvalidImageError`` / ``ImageTooLargeError``.

        ``max_bytes``: the byte limit when not the request body's (an upload's is larger).
        """
        limit = self.settings.max_image_bytes if max_bytes is None else max_bytes
        if len(data) > limit:
            raise ImageTooLargeError(f"the image is {len(data)} bytes; the limit is {limit} bytes")
        return self.classifier.tensor(data, max_pixels=self.settings.max_image_pixels)

    def classify(self, tensor: np.ndarray) -> tuple[Prediction, float]:
        t0 = time.perf_counter()
        prediction = self.classifier.predict(tensor)
        return prediction, (time.perf_counter() - t0) * 1000

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
        context = dict(context or {})

        def build(image: bytes | None = None, image_ref: str | None = None) -> JobMessage:
            return JobMessage(
                job_id=job_id,
                image=image,
                image_ref=image_ref,
                context=context,
                deadline_at=deadline_at,
                priority=priority,
            )

        if image_ref is not None:
            return build(image_ref=image_ref)
        if len(data) <= self.settings.inline_image_bytes:
            return build(image=data)
        if self.settings.payload_bucket:
            return build(image_ref=self.payloads.put(self.settings.payload_bucket, job_id, data))
        if len(data) <= SQS_INLINE_LIMIT:
            return build(image=data)
        raise ImageTooLargeError(
            f"the image is {len(data)} bytes; without a payload bucket the limit is {SQS_INLINE_LIMIT} bytes"
        )

    def enqueue(
        self,
        record: JobRecord,
        data: bytes,
        context: dict[str, str] | None = None,
        idempotency: IdempotencyRecord | None = None,
    ) -> None:
        """Write the job record, then publish its message.

        The record comes first so a worker never sees a job that has no record. When the write's or
        the publish's outcome is unknown (a timeout) or the publish failed, the job is marked failed
        (only while still queued, so a published job that a worker already took is left alone) and
        the idempotency key released, so the client's retry starts afresh. If even that cannot be
        written, the worker's reconciler finds the never-started record later.
        """
        self.publish(self.record_job(record, data, context, idempotency), idempotency)

    def record_job(
        self,
        record: JobRecord,
        data: bytes,
        context: dict[str, str] | None = None,
        idempotency: IdempotencyRecord | None = None,
        image_ref: str | None = None,
    ) -> JobMessage:
        """:meth:`enqueue`'s first half: write the record; returns the message :meth:`publish` sends.

        The fast path writes the record while the fast model runs, and publishes (or, when the
        cascade answers, does not) once it has answered: see ``twopass.api.submit``.
        """
        message = self.message(
            record.job_id, data, context, deadline_at=record.deadline_at, priority=record.priority, image_ref=image_ref
        )
        record.image_ref, record.context = message.image_ref, message.context
        try:
            self.store.create(record, idempotency)
        except DependencyError as exc:
            self._abandon(record.job_id, idempotency, f"the job could not be recorded: {exc}")
            raise
        return message

    def publish(self, message: JobMessage, idempotency: IdempotencyRecord | None = None) -> None:
        """:meth:`enqueue`'s second half: send the message of a recorded job (abandoning the job on failure)."""
        try:
            self.publisher_for(message.priority).publish(message)
        except DependencyError as exc:
            self._abandon(message.job_id, idempotency, f"could not enqueue: {exc}")
            raise

    def _abandon(self, job_id: str, idempotency: IdempotencyRecord | None, reason: str) -> None:
        try:
            self.store.fail(job_id, reason, only_if_queued=True)
            if idempotency is not None:
                self.idempotency.forget(idempotency)
        except DependencyError:
            logger.warning("job %s: %s; not marked failed either (the reconciler will)", job_id, reason)

    # -- reads -------------------------------------------------------------------------------

    def job(self, job_id: str, owner: str) -> JobRecord:
        """The caller's own job; another owner's job is as unknown as a missing one."""
        record = self.store.get(job_id)
        if record is None or record.owner != owner:
            raise JobNotFoundError(f"no job {job_id!r} (unknown or expired)")
        return record

    def jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """A page of the caller's own jobs, newest first, and the cursor of the next page."""
        return self.store.list_jobs(owner, status=status, limit=limit, cursor=cursor)

    # -- job control -------------------------------------------------------------------------

    def cancel(self, job_id: str, owner: str) -> JobRecord:
        """Cancel the caller's queued or running job; the cancelled record.

        A worker that meets the job later skips it, and one running it has its result refused by the
        store. Raises :class:`JobFinalError` when the job had already ended.
        """
        record = self.job(job_id, owner)
        if record.final or not self.store.cancel(job_id):
            # Either it was final when read, or it became final in between (a worker finished it).
            now = self.job(job_id, owner)
            raise JobFinalError(f"job {job_id} has already ended ({now.status.value}); there is nothing to cancel")
        return self.job(job_id, owner)

    def retry(self, job_id: str, owner: str) -> JobRecord:
        """Queue the caller's failed, expired or cancelled job again, under the same id.

        Only a job whose image is still kept in the payload bucket can run again: raises
        :class:`ImageGoneError` otherwise, :class:`JobNotRetryableError` for a job in another state.
        """
        record = self.job(job_id, owner)
        if record.status not in RETRYABLE_STATUSES:
            state = "has succeeded" if record.status is JobStatus.SUCCEEDED else f"is {record.status.value}"
            raise JobNotRetryableError(f"job {job_id} {state}: only failed, expired and cancelled jobs can be retried")
        if not record.image_ref or not self.payloads.exists(record.image_ref):
            raise ImageGoneError(f"job {job_id}'s image is no longer kept, so it cannot run again; submit it anew")
        if not self.store.retry(job_id):
            now = self.job(job_id, owner)
            raise JobNotRetryableError(f"job {job_id} is {now.status.value} now: it changed while being retried")
        message = JobMessage(
            job_id=job_id, image_ref=record.image_ref, context=dict(record.context or {}), priority=record.priority
        )
        try:
            self.publisher_for(record.priority).publish(message)
        except DependencyError as exc:
            # Queued with no message would wait for ever: record why it did not run instead.
            self._abandon(job_id, None, f"could not enqueue the retry: {exc}")
            raise EnqueueError(f"could not enqueue the retry of job {job_id}: {exc}") from exc
        return self.job(job_id, owner)

    def backlog(self) -> int:
        """Jobs waiting or in flight in the queues (SQS's approximate counts, summed over both queues)."""
        total = 0
        for publisher in filter(None, (self.publisher, self.high_priority_publisher)):
            depth = publisher.ping()
            total += int(depth.get("visible", 0)) + int(depth.get("in_flight", 0))
        return total

    def sample_image(self) -> bytes:
        return SAMPLE_IMAGE.read_bytes()

    def slow_card(self) -> dict[str, Any] | None:
        """The slow model's card: from the file if this host has it, else from a live worker."""
        path = card_path(Path(self.settings.slow_model))
        if path.is_file():
            return ModelCard.load(path).to_dict()
        try:
            for beat in self.store.workers():
                card = beat.info.get("model_card")
                if isinstance(card, dict):
                    return card
        except DependencyError:
            pass
        return None

    def health(self) -> dict[str, dict[str, Any]]:
        """Per-backend health: fast model, queue, table, workers."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            checks["fast_model"] = {"status": "ok", "model": self.fast_name, "provider": self.classifier.providers[0]}
        except ModelLoadError as exc:
            checks["fast_model"] = {"status": "error", "detail": str(exc)}
        try:
            checks["queue"] = {"status": "ok", **self.publisher.ping()}
        except DependencyError as exc:
            checks["queue"] = {"status": "error", "detail": str(exc)}
        try:
            self.store.ping()
            checks["table"] = {"status": "ok"}
        except DependencyError as exc:
            checks["table"] = {"status": "error", "detail": str(exc)}
        checks["worker"] = self._worker_health()
        return checks

    def _worker_health(self) -> dict[str, Any]:
        try:
            beats = self.store.workers()
        except DependencyError as exc:
            return {"status": "unknown", "detail": str(exc)}
        now = time.time()
        alive = [b for b in beats if b.age(now) <= self.settings.worker_stale_seconds]
        info: dict[str, Any] = {
            "alive": len(alive),
            "last_heartbeat_age_s": round(beats[0].age(now), 3) if beats else None,
            "workers": [_worker_summary(b, now) for b in alive],
        }
        # No live worker is normal when the service has scaled to zero: jobs wait in the queue.
        return {"status": "ok" if alive else "idle", **info}


def _worker_summary(beat: WorkerBeat, now: float) -> dict[str, Any]:
    info = {k: v for k, v in beat.info.items() if k != "model_card"}
    card = beat.info.get("model_card")
    if isinstance(card, dict):
        info["model_version"], info["model_sha256"] = card.get("version"), card.get("sha256")
    return {"id": beat.worker_id, "age_s": round(beat.age(now), 3), **info}
