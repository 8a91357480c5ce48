"""Result recording: a job's state transitions in the store, then the message's acknowledgement.

Every write is conditional in the store, so a redelivered or duplicated message is harmless; a
message is acknowledged only once its job's final state is durable. A write the table refuses even
after a few retries leaves the message to be redelivered.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twopass.backoff import Backoff, retry
from twopass.exceptions import DependencyError, TwopassError
from twopass.jobs.base import JobStatus, JobStore
from twopass.payloads import PayloadStore
from twopass.queue.base import Delivery
from twopass.worker.events import WorkerEvents
from twopass.worker.leases import Leases
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: Store writes in flight at once (each is one network round trip).
STORE_THREADS = 16


class Recorder:
    """Marks jobs running, succeeded or failed for one worker and acks what is final."""

    def __init__(
        self,
        store: JobStore,
        leases: Leases,
        payloads: PayloadStore,
        events: WorkerEvents,
        stats: WorkerStats,
        *,
        worker_id: str,
        stop: threading.Event,
    ) -> None:
        self.store = store
        self.leases = leases
        self.payloads = payloads
        self.events = events
        self.stats = stats
        self.worker_id = worker_id
        self._stop = stop
        self._pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def _retry[T](self, fn: Callable[[], T]) -> T:
        # A short outage is ridden out here; a shutdown cuts the waits short (the message then
        # simply comes back).
        return retry(fn, attempts=4, backoff=Backoff(base=0.2), stop=self._stop)

    def retry_later(self, delivery: Delivery, why: str) -> None:
        """Not the job's fault (a dependency is down): leave the message to be redelivered."""
        logger.warning("job %s: %s; will be redelivered", delivery.message.job_id, why)
        self.stats.add(retried=1)
        self.leases.drop([delivery])

    # -- running -------------------------------------------------------------------------------

    def start(self, deliveries: Sequence[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """Mark each job running, in parallel: ``(to run, already final)``.

        A job that is already final (a duplicate delivery) or unknown is not run; its message may be
        acked. One the table could not mark is left for redelivery and is in neither list.
        """
        outcomes = list(self._pool.map(self._start_one, deliveries))
        running = [d for d, outcome in zip(deliveries, outcomes, strict=True) if outcome is True]
        final = [d for d, outcome in zip(deliveries, outcomes, strict=True) if outcome is False]
        return running, final

    def _start_one(self, delivery: Delivery) -> bool | None:
        job_id = delivery.message.job_id
        try:
            record = self._retry(lambda: self.store.start(job_id, self.worker_id))
        except DependencyError as exc:
            self.retry_later(delivery, f"could not mark running ({exc})")
            return None
        if record is None:
            self.stats.add(duplicates=1)
            return False
        return True

    # -- final states --------------------------------------------------------------------------

    def succeed_all(self, results: Sequence[tuple[Delivery, dict[str, Any]]]) -> None:
        """Write every result (in parallel, conditional), then ack the batch in one call."""
        done = [d for d in self._pool.map(self._succeed_one, results) if d is not None]
        self.leases.ack(done)
        self.events.flush()  # one EMF blob per batch

    def _succeed_one(self, item: tuple[Delivery, dict[str, Any]]) -> Delivery | None:
        delivery, result = item
        job_id = delivery.message.job_id
        ok = self._finish(delivery, JobStatus.SUCCEEDED, lambda: self.store.succeed(job_id, result), result=result)
        return delivery if ok else None

    def fail(self, delivery: Delivery, reason: str) -> bool:
        """Record a permanent failure; ``True`` when the message may be acked."""
        job_id = delivery.message.job_id
        return self._finish(delivery, JobStatus.FAILED, lambda: self.store.fail(job_id, reason), error=reason)

    def _finish(
        self,
        delivery: Delivery,
        status: JobStatus,
        write: Callable[[], bool],
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Write a final state (conditional: only the first write lands); ``True`` when the message may be acked."""
        try:
            wrote = self._retry(write)
        except DependencyError as exc:
            self.retry_later(delivery, f"could not record {status.value} ({exc})")
            return False
        if not wrote:  # final already: a duplicate delivery
            self.stats.add(duplicates=1)
            return True
        self.stats.add(succeeded=int(status is JobStatus.SUCCEEDED), failed=int(status is JobStatus.FAILED))
        self.events.final(delivery.message, status, result, error)
        # A failed job keeps its claim-checked image, for a redrive after a fix.
        if status is JobStatus.SUCCEEDED and delivery.message.image_ref:
            self._drop_payload(delivery.message.image_ref)
        return True

    def _drop_payload(self, ref: str) -> None:
        try:
            self.payloads.delete(ref)
        except TwopassError as exc:  # the bucket's lifecycle rule removes it later anyway
            logger.info("could not delete payload %s: %s", ref, exc)

    def inference_failed(self, deliveries: Sequence[Delivery], reason: str) -> None:
        """The model failed on a batch: fail the jobs on their last allowed delivery, retry the rest."""
        done = []
        for delivery in deliveries:
            if not self.leases.last_attempt(delivery):
                self.retry_later(delivery, reason)
            elif self.fail(delivery, reason):
                done.append(delivery)
        self.leases.ack(done)
        self.events.flush()
