"""Completion events: every final state of a job, published to an Amazon EventBridge bus.

One :class:`EventPublisher` listens on the job store (:meth:`~twopass.jobs.base.JobStore.on_final`),
so whoever writes the final state (the worker, a cancel in the API, an expiry, the dead-letter
sweep, the reconciler) announces it the same way. Publishing never blocks or fails a job: the
worker's publisher sends from a background thread, batching up to 10 entries per PutEvents call;
each call is retried with capped backoff, and what still fails is counted (``EventsFailed``) and
logged, never raised. The API's publisher sends at once instead (``background=False``): a Lambda
function is frozen between invocations, so a thread left to send later might never run; a call
there costs one PutEvents round trip on the request that wrote the final state, bounded by the
request path's short timeouts.

An event::

    {"source": "twopass", "detail-type": "Job Succeeded",
     "detail": {"job_id", "owner", "status", "batch_id", "label", "top_k", "model", "error", "finished_at"}}
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twopass.backoff import Backoff, retry
from twopass.exceptions import DependencyError
from twopass.jobs.base import JobRecord, JobStatus, JobStore
from twopass.observability.metrics import Metric, MetricsSink

logger = logging.getLogger(__name__)

SOURCE = "twopass"
#: ``detail-type`` of each final state's event.
DETAIL_TYPES = {
    JobStatus.SUCCEEDED: "Job Succeeded",
    JobStatus.FAILED: "Job Failed",
    JobStatus.CANCELLED: "Job Cancelled",
    JobStatus.EXPIRED: "Job Expired",
}
#: Entries one PutEvents call takes.
MAX_ENTRIES = 10
#: The largest ``error`` text carried (an event is at most 256 KB; errors are short anyway).
_MAX_ERROR = 2000


class _PartialFailureError(DependencyError):
    """PutEvents accepted the call but refused some entries; only those are sent again."""


def event_detail(record: JobRecord) -> dict[str, Any]:
    """The ``detail`` of a job's completion event: who, what state, and its answer or error."""
    result = record.result or {}
    # A shadow candidate's answer is never served, events included.
    return {
        "job_id": record.job_id,
        "owner": record.owner,
        "status": record.status.value,
        "batch_id": record.batch_id,
        "label": result.get("label") if record.status is JobStatus.SUCCEEDED else None,
        "top_k": result.get("top_k") if record.status is JobStatus.SUCCEEDED else None,
        "model": result.get("model"),
        "error": record.error[:_MAX_ERROR] if record.error else None,
        "finished_at": record.finished_at,
    }


def event_entry(record: JobRecord, bus_name: str) -> dict[str, Any]:
    """One PutEvents entry for ``record`` (a job in a final state)."""
    return {
        "Source": SOURCE,
        "DetailType": DETAIL_TYPES[record.status],
        "Detail": json.dumps(event_detail(record), separators=(",", ":")),
        "EventBusName": bus_name,
    }


class EventPublisher:
    """Publishes each final job state to ``bus_name``; register it with ``store.on_final(publisher)``.

    ``client`` is an EventBridge client (boto3's ``events``). With ``background`` a daemon thread
    sends (batched, retried); without, the caller's thread does, with the same retries.
    """

    def __init__(
        self,
        bus_name: str,
        client: Any,
        *,
        metrics: MetricsSink | None = None,
        background: bool = True,
        attempts: int = 4,
        backoff: Callable[[], Backoff] = lambda: Backoff(base=0.2, cap=5.0, jitter=True),
        linger_seconds: float = 0.05,
    ) -> None:
        self.bus_name = bus_name
        self.client = client
        self.metrics = metrics
        self.attempts = max(1, attempts)
        self._backoff = backoff
        self._linger = linger_seconds
        self._stop = threading.Event()
        self._queue: queue.Queue[dict[str, Any] | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()

    def __call__(self, record: JobRecord) -> None:
        """The store's listener: announce ``record``'s final state (never raises, never waits on the bus)."""
        if record.status not in DETAIL_TYPES:
            return
        try:
            entry = event_entry(record, self.bus_name)
        except (TypeError, ValueError) as exc:  # a result that is not JSON: count it, never fail the job
            logger.warning("job %s: no completion event (%s)", record.job_id, exc)
            self._count(Metric.EVENTS_FAILED, 1)
            return
        if self._queue is not None:
            self._queue.put(entry)
        else:
            self.send([entry])

    def send(self, entries: Sequence[dict[str, Any]]) -> int:
        """PutEvents ``entries`` (at most 10) with retries; how many were published. Never raises."""
        pending = list(entries)
        policy = self._backoff()

        def put() -> None:
            nonlocal pending
            try:
                out = self.client.put_events(Entries=pending)
            except Exception as exc:
                raise DependencyError(f"PutEvents: {exc}") from exc
            if out.get("FailedEntryCount", 0):
                results = out.get("Entries", [])
                pending = [e for e, r in zip(pending, results, strict=False) if r.get("ErrorCode")]
                raise _PartialFailureError(f"{len(pending)} of the events were refused")

        try:
            retry(put, attempts=self.attempts, backoff=policy, stop=self._stop)
        except DependencyError as exc:
            logger.warning("%d completion event(s) not published: %s", len(pending), exc)
            self._count(Metric.EVENTS_FAILED, len(pending))
            self._count(Metric.EVENTS_PUBLISHED, len(entries) - len(pending))
            return len(entries) - len(pending)
        self._count(Metric.EVENTS_PUBLISHED, len(entries))
        return len(entries)

    def _count(self, metric: Metric, value: int) -> None:
        if self.metrics is not None and value:
            self.metrics.add(metric, value)
            if self._queue is None:  # sent in a request: nothing else flushes this sink
                self.metrics.flush()

    def _run(self) -> None:
        assert self._queue is not None
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            closing = False
            # Linger briefly so a worker batch's jobs share PutEvents calls (10 entries each).
            while len(batch) < MAX_ENTRIES:
                try:
                    more = self._queue.get(timeout=self._linger)
                except queue.Empty:
                    break
                if more is None:
                    closing = True
                    break
                batch.append(more)
            self.send(batch)
            if closing:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop the thread."""
        if self._queue is None or self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()  # cut the retries short; what is left is lost (and logged by send)
            self._thread.join(1.0)
        if self.metrics is not None:
            self.metrics.flush()


def attach(store: JobStore, bus_name: str, *, metrics: MetricsSink | None = None, background: bool = True,
           client: Any | None = None) -> EventPublisher | None:  # fmt: skip
    """An :class:`EventPublisher` for ``bus_name`` listening on ``store``; ``None`` when the name is empty (off)."""
    if not bus_name:
        return None
    if client is None:
        from twopass import aws

        client = aws.client("events")
    publisher = EventPublisher(bus_name, client, metrics=metrics, background=background)
    store.on_final(publisher)
    return publisher
