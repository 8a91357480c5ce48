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

Events are delivered at least once, so a crash never loses one: a worker deletes a job's queue
message only after the job's event is published (a killed worker's message comes back, and the
worker that meets the job final publishes its event again); any other writer of a final state (a
cancel, the sweep, the reconciler, an answer at once) records the event as owed on the job in the
same write (``event_owed``, see :class:`~twopass.jobs.base.JobStore`), the publisher clears it once
PutEvents accepted the event, and the reconciler publishes again what stays owed. A consumer may
so see an event twice: ``detail.event_id`` is the same for every copy of one final state
(:func:`event_id`), and is what to de-duplicate on.

An event::

    {"source": "twopass", "detail-type": "Job Succeeded",
     "detail": {"event_id", "job_id", "owner", "status", "batch_id", "label", "top_k", "model", "error",
                "finished_at"}}
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twopass.backoff import Backoff, retry
from twopass.exceptions import DependencyError
from twopass.jobs.base import Delivered, JobRecord, JobStatus, JobStore
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


#: Announcements remembered for :meth:`EventPublisher.when_delivered`, newest kept (a worker asks
#: right after its writes; older ones are only ever asked about by nobody).
_TRACKED = 10_000


class _PartialFailureError(DependencyError):
    """PutEvents accepted the call but refused some entries; only those are sent again."""


def event_id(record: JobRecord) -> str:
    """The id of a final state's event, the same in every copy of it: ``<job id>-<run>-<attempts>-<status>``.

    A final state never changes until the job is retried (a new run) or redriven (more attempts), so
    one final state has one id however often it is published; two final states never share one.
    """
    return f"{record.job_id}-{record.run}-{record.attempts}-{record.status.value}"


def event_detail(record: JobRecord) -> dict[str, Any]:
    """The ``detail`` of a job's completion event: its id, who, what state, and its answer or error."""
    result = record.result or {}
    # A shadow candidate's answer is never served, events included.
    return {
        "event_id": event_id(record),
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


@dataclass(eq=False)
class _Outgoing:
    """One announced final state on its way to the bus."""

    job_id: str
    #: ``None`` when the record cannot become an event (counted, logged): nothing left to deliver.
    entry: dict[str, Any] | None
    #: The record's outbox token, cleared in the store once the event is published.
    owed: str | None = None
    done: bool = False
    published: bool = False


@dataclass(eq=False)
class _Waiter:
    outgoing: list[_Outgoing]
    asked: list[str]
    then: Delivered


class EventPublisher:
    """Publishes each final job state to ``bus_name``; register it with ``store.on_final(publisher)``.

    ``client`` is an EventBridge client (boto3's ``events``). With ``background`` a daemon thread
    sends (batched, retried); without, the caller's thread does, with the same retries. With
    ``store``, each published event whose record owed it (``event_owed``) is settled there.
    :meth:`when_delivered` tells a worker when it may delete the messages of the jobs it finished.
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
        store: JobStore | None = None,
    ) -> None:
        self.bus_name = bus_name
        self.client = client
        self.metrics = metrics
        self.store = store
        self.attempts = max(1, attempts)
        self._backoff = backoff
        self._linger = linger_seconds
        self._stop = threading.Event()
        self._queue: queue.Queue[_Outgoing | None] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, _Outgoing] = OrderedDict()
        self._waiters: list[_Waiter] = []
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._run, name="events", daemon=True)
            self._thread.start()

    def __call__(self, record: JobRecord) -> None:
        """The store's listener: announce ``record``'s final state (never raises, never waits on the bus)."""
        if record.status not in DETAIL_TYPES:
            return
        try:
            entry: dict[str, Any] | None = event_entry(record, self.bus_name)
        except (TypeError, ValueError) as exc:  # a result that is not JSON: count it, never fail the job
            logger.warning("job %s: no completion event (%s)", record.job_id, exc)
            self._count(Metric.EVENTS_FAILED, 1)
            entry = None
        outgoing = _Outgoing(record.job_id, entry, record.event_owed)
        with self._lock:
            self._latest[record.job_id] = outgoing
            self._latest.move_to_end(record.job_id)
            while len(self._latest) > _TRACKED:
                self._latest.popitem(last=False)
        if entry is None:
            self._settle([outgoing], [])
        elif self._queue is not None:
            self._queue.put(outgoing)
        else:
            self._deliver([outgoing])

    def when_delivered(self, job_ids: Sequence[str], then: Delivered) -> None:
        """Call ``then`` with those of ``job_ids`` whose latest announced event was published, once each
        was dealt with (published, or given up after retries); a job never announced here counts as
        not published. ``then`` runs on the sending thread, or on this one when all are done already."""
        with self._lock:
            outgoing = [self._latest[j] for j in dict.fromkeys(job_ids) if j in self._latest]
            waiter = _Waiter(outgoing, list(job_ids), then)
            self._waiters.append(waiter)
        self._notify()

    def _deliver(self, batch: list[_Outgoing]) -> None:
        entries = [o.entry for o in batch if o.entry is not None]
        published = self._put(entries)
        self._settle(batch, published)

    def _settle(self, batch: list[_Outgoing], published: list[bool]) -> None:
        """Mark ``batch`` dealt with, clear the outbox of what was published, tell the waiters."""
        sent = iter(published)
        for outgoing in batch:
            # An entry that can never be an event is as delivered as it will ever be.
            outgoing.published = next(sent) if outgoing.entry is not None else True
            if outgoing.published and outgoing.owed and self.store is not None:
                self._clear(outgoing)
        with self._lock:
            for outgoing in batch:
                outgoing.done = True
        self._notify()

    def _clear(self, outgoing: _Outgoing) -> None:
        assert self.store is not None and outgoing.owed is not None
        try:
            self.store.settle_event(outgoing.job_id, outgoing.owed)
        except Exception as exc:  # noqa: BLE001 - the event went out; the reconciler may only send it again
            logger.info("job %s: event published, its outbox not cleared (%s)", outgoing.job_id, exc)

    def _notify(self) -> None:
        """Call the waiters whose announcements are all dealt with (outside the lock: they may block)."""
        with self._lock:
            ready = [w for w in self._waiters if all(o.done for o in w.outgoing)]
            self._waiters = [w for w in self._waiters if w not in ready]
        for waiter in ready:
            delivered = {o.job_id for o in waiter.outgoing if o.published}
            try:
                waiter.then({j for j in waiter.asked if j in delivered})
            except Exception:
                logger.exception("a completion-event waiter failed")

    def send(self, entries: Sequence[dict[str, Any]]) -> int:
        """PutEvents ``entries`` (at most 10) with retries; how many were published. Never raises."""
        return sum(self._put(entries))

    def _put(self, entries: Sequence[dict[str, Any]]) -> list[bool]:
        """PutEvents ``entries`` (at most 10) with retries; which of them were published. Never raises."""
        if not entries:
            return []
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
            unsent = {id(e) for e in pending}
            return [id(e) not in unsent for e in entries]
        self._count(Metric.EVENTS_PUBLISHED, len(entries))
        return [True] * len(entries)

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
            self._deliver(batch)
            if closing:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (within ``timeout``), then stop the thread."""
        if self._queue is None or self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Cut the retries short: what is left is not published (logged by send); the messages of
            # those jobs are not deleted, so their events come back with them.
            self._stop.set()
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
    publisher = EventPublisher(bus_name, client, metrics=metrics, background=background, store=store)
    store.on_final(publisher)
    return publisher
