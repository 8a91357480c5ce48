"""CloudWatch metrics as EMF: one JSON blob on stdout per flush, turned into metrics by CloudWatch
Logs on Lambda and on ECS (awslogs) alike, with no API call on the request path.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

NAMESPACE = "twopass"


class Metric(StrEnum):
    """Every metric twopass emits; the dashboard in template.yaml plots these names."""

    FAST_INFERENCE_MS = "FastInferenceMs"
    ENQUEUE_MS = "EnqueueMs"
    JOBS_ACCEPTED = "JobsAccepted"
    JOBS_CANCELLED = "JobsCancelled"
    JOBS_SHED = "JobsShed"
    QUEUE_WAIT_MS = "QueueWaitMs"
    SLOW_INFERENCE_MS = "SlowInferenceMs"
    BATCH_SIZE = "BatchSize"
    JOBS_SUCCEEDED = "JobsSucceeded"
    JOBS_FAILED = "JobsFailed"
    #: Worker: jobs whose deadline passed before a worker could start them (never run).
    JOBS_EXPIRED = "JobsExpired"
    DEAD_LETTERED = "DeadLettered"
    CALLBACKS_DELIVERED = "CallbacksDelivered"
    CALLBACKS_FAILED = "CallbacksFailed"
    #: Worker: callbacks still queued or being tried when the worker stopped (counted in CallbacksFailed too).
    CALLBACKS_DROPPED = "CallbacksDropped"
    #: API: jobs the cascade answered with the fast model (no slow pass), cache hits, ``slow: never`` answers.
    CASCADE_ANSWERED = "CascadeAnswered"
    CACHE_HITS = "CacheHits"
    FAST_ONLY = "FastOnly"
    #: Worker: 1 when a slow top-1 is the fast top-1, else 0, per slow result (its average is the rate).
    FAST_SLOW_AGREEMENT = "FastSlowAgreement"
    #: Worker, shadow rollout: 1 when the candidate's top-1 is the serving model's, else 0, per shadowed job.
    CANDIDATE_AGREEMENT = "CandidateAgreement"
    #: Worker: slow answers, with a ``model_version`` dimension (which version served them).
    SLOW_ANSWERS = "SlowAnswers"
    #: API and worker: completion events put on the EventBridge bus, and those given up after retries.
    EVENTS_PUBLISHED = "EventsPublished"
    EVENTS_FAILED = "EventsFailed"
    #: API: images submitted in ``POST /batches`` calls, and items of them refused one by one.
    BATCH_ITEMS = "BatchItems"
    BATCH_ITEMS_REFUSED = "BatchItemsRefused"
    #: Worker: 1 a minute per worker, with ``provider`` (what the model serves on) and ``requested`` dimensions.
    SERVING_PROVIDER = "ServingProvider"


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
        self.service = service
        self._lock = threading.Lock()
        self._pending = 0

    def add(self, metric: Metric, value: float) -> None:
        from aws_lambda_powertools.metrics import MetricUnit

        unit = MetricUnit(_UNITS.get(metric, "Count"))
        with self._lock:
            self._metrics.add_metric(name=metric.value, unit=unit, value=value)
            self._pending += 1

    def add_dimensioned(self, metric: Metric, value: float, dimensions: dict[str, str]) -> None:
        """One value with dimensions of its own beside ``service`` (e.g. ``model_version``), printed at once:
        EMF puts one dimension set on a whole blob, and the batch's other metrics must keep theirs."""
        from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

        single = EphemeralMetrics(namespace=NAMESPACE)
        single.set_default_dimensions(**{"service": self.service, **dimensions})
        single.add_metric(name=metric.value, unit=MetricUnit(_UNITS.get(metric, "Count")), value=value)
        with self._lock:
            _emit(single.serialize_metric_set())

    def add_metadata(self, key: str, value: Any) -> None:
        with self._lock:
            self._metrics.add_metadata(key=key, value=value)

    def flush(self) -> None:
        """Print what was recorded since the last flush as one EMF blob (nothing if empty)."""
        with self._lock:
            if self._pending:
                _emit(self._metrics.serialize_metric_set())
                self._metrics.clear_metrics()
                self._pending = 0


def _emit(blob: Mapping[str, Any]) -> None:
    """Write one EMF blob and its newline in a single write.

    powertools prints the blob and the newline as two writes, so a log record from another thread
    could land between them and leave two JSON documents on one line: CloudWatch would then parse
    neither (the worker logs from several threads)."""
    from aws_lambda_powertools.metrics.functions import is_metrics_disabled

    if not is_metrics_disabled():
        sys.stdout.write(json.dumps(blob, separators=(",", ":")) + "\n")
        sys.stdout.flush()
