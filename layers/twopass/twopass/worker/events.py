"""What the worker reports as it goes: metrics, completion callbacks, per-job log records.

The pipeline calls these hooks and knows nothing of CloudWatch or HTTP; tests and benchmarks use
the silent default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twopass.jobs.base import JobStatus
from twopass.observability.logs import job_extra
from twopass.observability.metrics import Metric, MetricsSink
from twopass.queue.base import JobMessage

if TYPE_CHECKING:
    from twopass.notify.sender import CallbackSender

logger = logging.getLogger("twopass.worker.jobs")

#: The metric each final state counts in (a cancel is counted by the API, which takes it).
_FINAL_METRICS = {JobStatus.SUCCEEDED: Metric.JOBS_SUCCEEDED, JobStatus.EXPIRED: Metric.JOBS_EXPIRED}


class WorkerEvents:
    """Hooks the worker calls; this base does nothing but log."""

    def batch(self, size: int, inference_ms: float, queue_wait_ms: Sequence[float]) -> None:
        """A batch went through the model."""

    def final(self, message: JobMessage, status: JobStatus, result: dict[str, Any] | None, error: str | None) -> None:
        """A job reached its final state (written once; duplicates do not call this)."""
        extra = job_extra(message.job_id, message.context.get("request_id"), status=status.value)
        if status is JobStatus.SUCCEEDED and result is not None:
            logger.info("job succeeded: %s", result.get("label"), extra=extra)
        else:
            logger.warning("job %s: %s", status.value, error, extra=extra)

    def dead_lettered(self, count: int) -> None:
        """``count`` dead-lettered jobs were marked failed."""

    def flush(self) -> None:
        """End of a batch: emit what was recorded."""

    def on_close(self, closer: Callable[[], None]) -> None:
        """Call ``closer`` when the worker closes (e.g. the completion-event publisher's drain)."""
        self.__dict__.setdefault("_closers", []).append(closer)

    def close(self) -> None:
        """Flush and stop whatever runs in the background."""
        for closer in self.__dict__.get("_closers", ()):
            closer()


class ObservedEvents(WorkerEvents):
    """Production hooks: EMF metrics per batch and signed completion callbacks."""

    def __init__(self, metrics: MetricsSink | None = None, callbacks: CallbackSender | None = None) -> None:
        self.metrics = metrics
        self.callbacks = callbacks

    def batch(self, size: int, inference_ms: float, queue_wait_ms: Sequence[float]) -> None:
        if self.metrics is None:
            return
        self.metrics.add(Metric.BATCH_SIZE, size)
        self.metrics.add(Metric.SLOW_INFERENCE_MS, inference_ms)
        for wait in queue_wait_ms:
            self.metrics.add(Metric.QUEUE_WAIT_MS, wait)

    def final(self, message: JobMessage, status: JobStatus, result: dict[str, Any] | None, error: str | None) -> None:
        super().final(message, status, result, error)
        if self.metrics is not None:
            self.metrics.add(_FINAL_METRICS.get(status, Metric.JOBS_FAILED), 1)
            if result is not None:
                self._quality(result)
        url = message.context.get("callback_url")
        if url and self.callbacks is not None:
            payload: dict[str, Any] = {"job_id": message.job_id, "status": status.value}
            # A shadow candidate's answer is never served, callbacks included.
            served = {k: v for k, v in result.items() if k != "shadow"} if result else None
            payload.update({"prediction": served.get("label"), "slow": served} if served else {"error": error})
            self.callbacks.submit(url, payload)

    def _quality(self, result: dict[str, Any]) -> None:
        """Agreement with the fast top-1 (a drift signal without labels), the shadow's, and who served."""
        assert self.metrics is not None
        if result.get("agreement") is not None:
            self.metrics.add(Metric.FAST_SLOW_AGREEMENT, int(bool(result["agreement"])))
        shadow = result.get("shadow")
        if isinstance(shadow, dict) and shadow.get("agreement") is not None:
            self.metrics.add(Metric.CANDIDATE_AGREEMENT, int(bool(shadow["agreement"])))
        if result.get("version"):
            self.metrics.add_dimensioned(Metric.SLOW_ANSWERS, 1, {"model_version": str(result["version"])})

    def dead_lettered(self, count: int) -> None:
        if self.metrics is not None:
            self.metrics.add(Metric.DEAD_LETTERED, count)

    def flush(self) -> None:
        if self.metrics is not None:
            self.metrics.flush()

    def close(self) -> None:
        super().close()
        self.flush()
        if self.callbacks is not None:
            self.callbacks.close()
