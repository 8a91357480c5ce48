"""Jobs answered without a slow pass: by the cascade (the fast answer is confident enough) or from the
result cache (the same image was answered before), and the fast answer the worker compares against.

The fast path (``twopass.api.usecases.submit``) decides; this carries the decisions out in the job store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import cached_property
from typing import Any

from twopass.api.services.health import HealthReport
from twopass.api.services.intake import JobIntake
from twopass.cascade import FAST_CLASS_ID, FAST_LABEL, FAST_VERSION, IMAGE_SHA256, OWNER, Cascade
from twopass.exceptions import DependencyError
from twopass.jobs.base import IdempotencyRecord, JobRecord, JobStatus
from twopass.jobs.cache import CachedResult, CacheKey, ResultCache, cache_for
from twopass.models.runtime import Classifier, Prediction
from twopass.queue.base import JobMessage

logger = logging.getLogger(__name__)

#: How long the API trusts what it learnt of the serving slow model's version (a worker's heartbeat).
SLOW_VERSION_SECONDS = 30.0
#: How long it trusts "no worker has said yet": short, so the cache starts soon after the first heartbeat.
UNKNOWN_VERSION_SECONDS = 2.0


def fast_context(prediction: Prediction, fast_version: str) -> dict[str, str]:
    return {FAST_CLASS_ID: str(prediction.class_ids[0]), FAST_LABEL: prediction.label, FAST_VERSION: fast_version}


def cache_context(owner: str, image_sha256: str) -> dict[str, str]:
    return {OWNER: owner, IMAGE_SHA256: image_sha256}


class Shortcuts:
    """The cascade, the result cache and the fast answer's trip to the worker, for one service."""

    def __init__(self, intake: JobIntake, reports: HealthReport, classifier: Callable[[], Classifier]) -> None:
        # The classifier is reached through a callable: the fast model loads on first use, not here.
        self.intake, self.reports, self._classifier = intake, reports, classifier
        settings = intake.settings
        self.cascade = Cascade(settings.cascade_threshold)
        self.cache: ResultCache | None = (
            cache_for(intake.store, settings.result_cache_ttl_hours * 3600) if settings.result_cache else None
        )
        self._slow_version: tuple[float, str | None] | None = None
        self._lock = threading.Lock()

    @cached_property
    def fast_version(self) -> str:
        return self._classifier().card.version

    # -- the result cache ---------------------------------------------------------------------

    def slow_version(self) -> str | None:
        """The serving slow model's version: its card beside this host's settings, else a worker's heartbeat.

        ``None`` when neither says (no worker has reported yet): the cache is then not consulted.
        """
        now = time.monotonic()
        with self._lock:
            if self._slow_version is not None:
                since, known = self._slow_version
                if now - since < (SLOW_VERSION_SECONDS if known else UNKNOWN_VERSION_SECONDS):
                    return known
        card = self.reports.slow_card()
        version = card.get("version") if card else None
        found = str(version) if version else None
        with self._lock:
            self._slow_version = (now, found)
        return found

    def cache_key(self, owner: str, data: bytes) -> CacheKey | None:
        slow = self.slow_version()
        if slow is None:
            return None
        return CacheKey(owner, hashlib.sha256(data).hexdigest(), self.fast_version, slow)

    def lookup(self, owner: str, data: bytes) -> CachedResult | None:
        """The cached slow result for this image, if any. A cache that cannot be read is a miss."""
        if self.cache is None:
            return None
        try:
            key = self.cache_key(owner, data)
            return None if key is None else self.cache.get(key)
        except DependencyError as exc:
            logger.warning("result cache unavailable (%s); the job goes to the slow model", exc)
            return None

    def record_cached(self, record: JobRecord, hit: CachedResult, idempotency: IdempotencyRecord | None) -> None:
        """Create ``record`` already succeeded with the cached slow result (no queue message)."""
        record.status, record.finished_at = JobStatus.SUCCEEDED, time.time()
        record.result = {**hit.result, "cached": True, "cached_from": hit.source_job}
        try:
            self.intake.store.create(record, idempotency)
        except DependencyError as exc:
            # The write's outcome may be unknown: release the key as a failed enqueue does.
            self.intake.abandon(record.job_id, idempotency, f"the job could not be recorded: {exc}")
            raise

    # -- the cascade ----------------------------------------------------------------------------

    def fast_final(self, fast: dict[str, Any]) -> dict[str, Any]:
        """The job result when the cascade lets the fast answer stand."""
        return {**fast, "answered_by": "fast", "version": self.fast_version}

    def answer_fast(self, job_id: str, result: dict[str, Any], idempotency: IdempotencyRecord | None) -> None:
        """Record a recorded, never-published job succeeded with the fast answer (abandoning it on failure)."""
        try:
            written = self.intake.store.succeed(job_id, result)
        except DependencyError as exc:
            self.intake.abandon(job_id, idempotency, f"the fast answer could not be recorded: {exc}")
            raise
        if not written:  # nobody else knows the job yet, so nothing else can have ended it
            logger.warning("job %s was no longer open when the cascade answered it", job_id)

    def with_fast_answer(
        self, message: JobMessage, prediction: Prediction, owner: str, image_sha256: Callable[[], str]
    ) -> JobMessage:
        """The message, its context carrying the fast answer (and, with the cache on, the cache key's parts:
        ``image_sha256`` is called only then)."""
        extra = fast_context(prediction, self.fast_version)
        if self.cache is not None:
            extra.update(cache_context(owner, image_sha256()))
        return replace(message, context={**message.context, **extra})
