"""The API's composition root, independent of HTTP: the backends, the fast model and the services.

:class:`TwopassService` builds the backends named by the settings, owns the fast model (decode and
classify) and holds the narrow services the use cases and routes call directly: the enqueue path
(``intake``: :class:`~twopass.api.services.intake.JobIntake`), an owner's jobs (``control``:
:class:`~twopass.api.services.jobcontrol.JobControl`), health and the slow card (``reports``:
:class:`~twopass.api.services.health.HealthReport`), Idempotency-Key claims (``idempotency``),
presigned uploads (``uploads``) and the jobs answered without a slow pass (``shortcuts``).
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from functools import cached_property

import numpy as np

from twopass.api.services.fastmodel import load_fast_model
from twopass.api.services.health import HealthReport
from twopass.api.services.idempotency import Idempotency
from twopass.api.services.intake import SQS_INLINE_LIMIT, JobIntake
from twopass.api.services.jobcontrol import JobControl
from twopass.api.services.shortcuts import Shortcuts
from twopass.config import DATA_DIR, Settings
from twopass.exceptions import ImageTooLargeError
from twopass.jobs.base import JobStore
from twopass.models.runtime import Classifier, Prediction
from twopass.payloads import PayloadStore
from twopass.queue.base import JobPublisher
from twopass.uploads import Uploads

__all__ = ["SAMPLE_IMAGE", "SQS_INLINE_LIMIT", "TwopassService"]

SAMPLE_IMAGE = DATA_DIR / "cat.jpg"


class TwopassService:
    """The fast path and job bookkeeping; the FastAPI routes are a thin layer over this."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        publisher: JobPublisher,
        classifier: Classifier | Future[Classifier] | None = None,
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
        #: A fast model still loading (``fastmodel.preload``): the first use waits for it.
        self._pending_classifier = classifier if isinstance(classifier, Future) else None
        if self._pending_classifier is None and classifier is not None:
            self.__dict__["classifier"] = classifier
        self.intake = JobIntake(settings, store, publisher, high_priority_publisher, self.payloads, self.idempotency)
        self.control = JobControl(self.intake)
        self.reports = HealthReport(self.intake, lambda: self.classifier)

    @classmethod
    def from_settings(cls, settings: Settings, classifier: Future[Classifier] | None = None) -> TwopassService:
        """DynamoDB, SQS and S3 backends named by ``settings``, with the request path's time budget;
        ``classifier``: the fast model already loading (``fastmodel.preload``)."""
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
            classifier,
            # Its S3 client is made on first use: a prediction with an inline image never needs one.
            payloads=PayloadStore(budget=budget),
            high_priority_publisher=SqsPublisher(high, client=sqs) if high else None,
        )

    @cached_property
    def classifier(self) -> Classifier:
        if self._pending_classifier is not None:  # loading on a thread since init began (coldstart)
            return self._pending_classifier.result()
        return load_fast_model(self.settings)

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
        return Shortcuts(self.intake, self.reports, lambda: self.classifier)

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
