"""What the API does, independent of HTTP: classify fast, record and enqueue the job, read it back."""

from __future__ import annotations

import logging
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from twopass.api.idempotency import Idempotency
from twopass.config import DATA_DIR, Settings
from twopass.exceptions import DependencyError, ImageTooLargeError, JobNotFoundError, ModelLoadError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStore, WorkerBeat
from twopass.models.card import ModelCard, card_path
from twopass.models.runtime import Classifier, Prediction
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher

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
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
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
        return cls(
            settings,
            DynamoJobStore(settings.table_name, settings.job_ttl_seconds, client=aws.client("dynamodb", budget)),
            SqsPublisher(settings.queue_url, client=aws.client("sqs", budget)),
            payloads=PayloadStore(aws.client("s3", budget) if settings.payload_bucket else None),
        )

    @cached_property
    def classifier(self) -> Classifier:
        return Classifier.from_location(
            self.settings.fast_model,
            providers=self.settings.providers,
            intra_op_threads=self.settings.intra_op_threads,
            top_k=self.settings.top_k,
        )

    def warm_up(self) -> None:
        """Load the fast model now rather than on first use (Lambda init runs at full CPU, and SnapStart keeps it)."""
        _ = self.classifier

    @property
    def fast_name(self) -> str:
        return self.classifier.name

    # -- fast path ---------------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        """Validate and preprocess; raises ``InvalidImageError`` / ``ImageTooLargeError``."""
        if len(data) > self.settings.max_image_bytes:
            raise ImageTooLargeError(
                f"the image is {len(data)} bytes; the limit is {self.settings.max_image_bytes} bytes"
            )
        return self.classifier.tensor(data, max_pixels=self.settings.max_image_pixels)

    def classify(self, tensor: np.ndarray) -> tuple[Prediction, float]:
        t0 = time.perf_counter()
        prediction = self.classifier.predict(tensor)
        return prediction, (time.perf_counter() - t0) * 1000

    def message(self, job_id: str, data: bytes, context: dict[str, str] | None = None) -> JobMessage:
        """The queue message for a job: the image inline, or a claim check for a big one."""
        context = dict(context or {})
        if len(data) <= self.settings.inline_image_bytes:
            return JobMessage(job_id=job_id, image=data, context=context)
        if self.settings.payload_bucket:
            ref = self.payloads.put(self.settings.payload_bucket, job_id, data)
            return JobMessage(job_id=job_id, image_ref=ref, context=context)
        if len(data) <= SQS_INLINE_LIMIT:
            return JobMessage(job_id=job_id, image=data, context=context)
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
        message = self.message(record.job_id, data, context)
        record.image_ref, record.context = message.image_ref, message.context
        try:
            self.store.create(record, idempotency)
        except DependencyError as exc:
            self._abandon(record.job_id, idempotency, f"the job could not be recorded: {exc}")
            raise
        try:
            self.publisher.publish(message)
        except DependencyError as exc:
            self._abandon(record.job_id, idempotency, f"could not enqueue: {exc}")
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
