"""CloudWatch metrics as EMF: JSON blobs on stdout, turned into metrics by CloudWatch Logs on Lambda
and on ECS (awslogs) alike, with no API call on the request path.

Two ways to flush. Per unit of work (``flush_every=0``, Lambda and the worker): :meth:`MetricsSink.flush`
prints what was recorded at once, since a Lambda sandbox may be frozen as soon as it has answered. In
a long-running server (``flush_every > 0``): values pile up and a background thread prints them every
``flush_every`` seconds, each metric's values as one array (EMF takes up to 100 a metric a blob), so a
request costs a list append instead of a JSON document and a write; :meth:`MetricsSink.close` prints
the rest at shutdown.

Every blob is written with its newline in one write: a log line from another thread cannot land inside it.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time
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


#: EMF's limits for one blob: values per metric, metrics per directive.
MAX_VALUES = 100
MAX_METRICS = 100


class MetricsSink:
    """Thread-safe EMF metrics for one service (``twopass-api`` or ``twopass-worker``).

    ``POWERTOOLS_METRICS_DISABLED=true`` (the local stack sets it) turns output off, as it does for
    powertools (``POWERTOOLS_DEV`` too, when the former is unset).
    """

    def __init__(self, service: str, *, flush_every: float = 0.0) -> None:
        self.service = service
        self.flush_every = flush_every
        self._lock = threading.Lock()
        #: Values by metric name, in the order first recorded since the last flush.
        self._values: dict[str, list[float]] = {}
        self._metadata: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if flush_every > 0:
            self._thread = threading.Thread(target=self._flush_periodically, name="metrics-flush", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    @property
    def periodic(self) -> bool:
        return self._thread is not None

    def add(self, metric: Metric, value: float) -> None:
        with self._lock:
            values = self._values.get(metric.value)
            if values is None:
                self._values[metric.value] = [float(value)]
            else:
                values.append(float(value))

    def add_dimensioned(self, metric: Metric, value: float, dimensions: dict[str, str]) -> None:
        """One value with dimensions of its own beside ``service`` (e.g. ``model_version``), printed at once:
        EMF puts one dimension set on a whole blob, and the batch's other metrics must keep theirs."""
        blob = _blob({"service": self.service, **dimensions}, {metric.value: [float(value)]}, {})
        with self._lock:
            _emit(blob)

    def add_metadata(self, key: str, value: Any) -> None:
        with self._lock:
            self._metadata[key] = value

    def flush(self) -> None:
        """A unit of work has ended: print what was recorded as one EMF blob (nothing if empty), unless
        a background thread prints periodically (then it goes with the next period's blob)."""
        if self._thread is None:
            self._print_pending()

    def drain(self) -> None:
        """Print whatever is pending now, whichever way this sink flushes (a server's shutdown, Lambda's answer)."""
        self._print_pending()

    def close(self) -> None:
        """Stop the periodic thread (if any) and print whatever is still pending."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._print_pending()

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self.flush_every):
            self._print_pending()

    def _print_pending(self) -> None:
        with self._lock:
            if not self._values:
                return
            values, metadata = self._values, self._metadata
            self._values, self._metadata = {}, {}
            for blob in _blobs({"service": self.service}, values, metadata):
                _emit(blob)


def _blobs(
    dimensions: dict[str, str], values: dict[str, list[float]], metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """As few blobs as EMF's limits allow: 100 metrics a blob, 100 values a metric a blob."""
    names = list(values)
    out = []
    for first in range(0, len(names), MAX_METRICS):
        group = names[first : first + MAX_METRICS]
        rounds = max(len(values[n]) for n in group)
        for start in range(0, rounds, MAX_VALUES):
            chunk = {n: values[n][start : start + MAX_VALUES] for n in group if len(values[n]) > start}
            out.append(_blob(dimensions, chunk, metadata))
            metadata = {}  # once is enough
    return out


def _blob(dimensions: dict[str, str], values: dict[str, list[float]], metadata: dict[str, Any]) -> dict[str, Any]:
    """One EMF document: the metric directive, the dimensions' values, each metric's values, metadata."""
    metrics = [{"Name": name, "Unit": _UNITS.get(Metric(name), "Count")} for name in values]
    return {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [list(dimensions)], "Metrics": metrics}],
        },
        **dimensions,
        **values,
        **metadata,
    }


def metrics_disabled() -> bool:
    """powertools' rule: ``POWERTOOLS_METRICS_DISABLED`` true, or ``POWERTOOLS_DEV`` true with it unset."""
    disabled = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    if disabled is not None:
        return _true(disabled)
    return _true(os.environ.get("POWERTOOLS_DEV", "false"))


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "y", "yes", "t", "true", "on")


def _emit(blob: Mapping[str, Any]) -> None:
    """Write one EMF blob and its newline in a single write.

    A blob written in two pieces (the text, then the newline, as powertools prints it) lets a log
    record from another thread land between them and leaves two JSON documents on one line:
    CloudWatch would then parse neither (the worker logs from several threads)."""
    if not metrics_disabled():
        sys.stdout.write(json.dumps(blob, separators=(",", ":")) + "\n")
        sys.stdout.flush()
