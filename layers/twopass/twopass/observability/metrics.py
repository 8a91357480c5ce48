"""CloudWatch metrics as EMF: one JSON blob on stdout per flush, turned into metrics by CloudWatch
Logs on Lambda and on ECS (awslogs) alike, with no API call on the request path.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any

NAMESPACE = "twopass"


class Metric(StrEnum):
    """Every metric twopass emits; the dashboard in template.yaml plots these names."""

    FAST_INFERENCE_MS = "FastInferenceMs"
    ENQUEUE_MS = "EnqueueMs"
    JOBS_ACCEPTED = "JobsAccepted"
    QUEUE_WAIT_MS = "QueueWaitMs"
    SLOW_INFERENCE_MS = "SlowInferenceMs"
    BATCH_SIZE = "BatchSize"
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_FAILED = "JobsFailed"
    DEAD_LETTERED = "DeadLettered"
    CALLBACKS_DELIVERED = "CallbacksDelivered"
    CALLBACKS_FAILED = "CallbacksFailed"


_UNITS = {
    Metric.FAST_INFERENCE_MS: "Milliseconds",
    Metric.ENQUEUE_MS: "Milliseconds",
    Metric.QUEUE_WAIT_MS: "Milliseconds",
    Metric.SLOW_INFERENCE_MS: "Milliseconds",
}


class MetricsSink:
    """Thread-safe wrapper over powertools' EMF metrics for one service (``api`` or ``worker``).

    ``POWERTOOLS_METRICS_DISABLED=true`` (the local stack sets it) turns output off.
    """

    def __init__(self, service: str) -> None:
        from aws_lambda_powertools import Metrics

        self._metrics = Metrics(namespace=NAMESPACE, service=service)
        self._lock = threading.Lock()
        self._pending = 0

    def add(self, metric: Metric, value: float) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        unit = MetricUnit(_UNITS.get(metric, "Count"))
        with self._lock:
            self._metrics.add_metric(name=metric.value, unit=unit, value=value)
            self._pending += 1

    def add_metadata(self, key: str, value: Any) -> None:
        with self._lock:
            self._metrics.add_metadata(key=key, value=value)

    def flush(self) -> None:
        """Print what was recorded since the last flush as one EMF blob (nothing if empty)."""
        with self._lock:
            if self._pending:  # powertools warns on every empty flush
                self._metrics.flush_metrics(raise_on_empty_metrics=False)
                self._pending = 0
