"""What the API does, independent of HTTP: classify fast, record and enqueue the job, read it back.

:class:`TwopassService` owns the fast model and holds three collaborators, one job each: the enqueue
path (:class:`~twopass.api.intake.JobIntake`), an owner's job reads and control
(:class:`~twopass.api.jobcontrol.JobControl`) and health reporting
(:class:`~twopass.api.health.HealthReport`). Its methods of the same names hand over to them.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from twopass.api.health import HealthReport
from twopass.api.idempotency import Idempotency
from twopass.api.intake import SQS_INLINE_LIMIT, JobIntake
from twopass.api.jobcontrol import JobControl
from twopass.config import DATA_DIR, Settings
from twopass.exceptions import ImageTooLargeError
from twopass.jobs.base import DEFAULT_PAGE, IdempotencyRecord, JobRecord, JobStatus, JobStore
from twopass.models.runtime import Classifier, Prediction
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher
from twopass.uploads import Uploads

if TYPE_CHECKING:
    from twopass.api.shortcuts import Shortcuts

__all__ = ["SAMPLE_IMAGE", "SQS_INLINE_LIMIT", "TwopassService"]

SAMPLE_IMAGE = DATA_DIR / "cat.jpg"


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
        self.intake = JobIntake(settings, store, publisher, high_priority_publisher, self.payloads, self.idempotency)
        self.control = JobControl(self.intake)
        self.reports = HealthReport(self.intake, lambda: self.classifier)

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
        from twopass.models.pack import check_pair

        classifier = Classifier.from_location(
            self.settings.fast_model,
            providers=self.settings.providers,
            intra_op_threads=self.settings.intra_op_threads,
            top_k=self.settings.top_k,
        )
        check_pair(self.settings.fast_model, self.settings.slow_model)  # both passes must name the same classes
        return classifier

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

    def sample_image(self) -> bytes:
        return SAMPLE_IMAGE.read_bytes()

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

    # -- the enqueue path (JobIntake) ----------------------------------------------------------

    def priority(self, requested: str | None) -> str:
        return self.intake.priority(requested)

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
        return self.intake.record_job(record, data, context, idempotency, image_ref)

    def publish(self, message: JobMessage, idempotency: IdempotencyRecord | None = None) -> None:
        """:meth:`enqueue`'s second half: send the message of a recorded job (abandoning the job on failure)."""
        self.intake.publish(message, idempotency)

    def _abandon(self, job_id: str, idempotency: IdempotencyRecord | None, reason: str) -> None:
        self.intake.abandon(job_id, idempotency, reason)

    # -- an owner's jobs (JobControl) -----------------------------------------------------------

    def job(self, job_id: str, owner: str) -> JobRecord:
        return self.control.job(job_id, owner)

    def jobs(
        self, owner: str, *, status: JobStatus | None = None, limit: int = DEFAULT_PAGE, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        return self.control.jobs(owner, status=status, limit=limit, cursor=cursor)

    def cancel(self, job_id: str, owner: str) -> JobRecord:
        return self.control.cancel(job_id, owner)

    def retry(self, job_id: str, owner: str) -> JobRecord:
        return self.control.retry(job_id, owner)

    # -- reports (HealthReport) -------------------------------------------------------------------

    def backlog(self) -> int:
        return self.reports.backlog()

    def slow_card(self) -> dict[str, Any] | None:
        return self.reports.slow_card()

    def health(self) -> dict[str, dict[str, Any]]:
        return self.reports.health()
