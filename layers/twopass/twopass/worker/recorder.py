"""Result recording: a job's state transitions in the store, then the message's acknowledgement.

Every write is conditional in the store, so a redelivered or duplicated message is harmless; a
message is acknowledged only once its job's final state is durable. A write the table refuses even
after a few retries leaves the message to be redelivered.

A short batch's jobs are not marked running with a write of their own: the start (attempts + 1,
``started_at``, the worker) is folded into the final write, one write per job instead of two (see
:class:`~twopass.jobs.base.Start`). Jobs are marked running up front, as before, when the batch is
expected to take long (so ``GET /job`` says ``running`` while it matters) and when the message is a
redelivery (a job that may be final already is then checked before it costs a model run). A job
that ran but whose result cannot be written has its attempt recorded by a start write when it is
left for redelivery, so ``attempts`` counts it either way.

A write the store refuses is explained by :class:`~twopass.worker.control.JobControl` (a cancelled
job, one past its deadline, or a duplicate), which also keeps the image of every job that did not
succeed, for a retry.

Completion events are owed by the messages: a result's message is deleted only once the job's
event is published (:meth:`~twopass.jobs.base.JobStore.when_announced`), so a worker killed between
the two leaves the message to come back, and the worker that meets the job final then publishes its
event again before deleting it. The final write needs no outbox attribute, and so no second write
to clear one (other writers' final states owe theirs on the job record instead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from twopass.backoff import Backoff, retry
from twopass.exceptions import DependencyError, TwopassError
from twopass.jobs.base import JobStatus, JobStore, Start
from twopass.payloads import PayloadStore
from twopass.queue.base import Delivery
from twopass.worker.caching import CacheFiller
from twopass.worker.control import JobControl
from twopass.worker.events import WorkerEvents
from twopass.worker.leases import Leases
from twopass.worker.outbox import EventOutbox
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: Store writes in flight at once (each is one network round trip).
STORE_THREADS = 16
#: A batch expected to run longer than this on the model has its jobs marked running up front, so a
#: client polling GET /job sees them running; shorter ones fold the start in (a GPU batch takes tens
#: of milliseconds, a CPU batch of 32 a second or two).
RUNNING_MARK_SECONDS = 10.0


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
        cache: CacheFiller | None = None,
    ) -> None:
        self.store = store
        #: Stores each succeeded result in the result cache, when it is on.
        self.cache = cache
        self.leases = leases
        self.payloads = payloads
        self.events = events
        self.stats = stats
        self.worker_id = worker_id
        self._stop = stop
        self._pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="store")
        #: Deadlines, cancelled jobs and kept images (see :mod:`twopass.worker.control`).
        self.control = JobControl(store, payloads, events, stats, retry=self._retry)
        #: Starts folded into the final write, by receipt, from :meth:`start` until the job is done.
        self._folded: dict[str, Start] = {}
        self._folded_lock = threading.Lock()
        #: Acks that wait for the jobs' events (the messages are the events' outbox).
        self.outbox = EventOutbox(store, leases, retry=self._retry)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.outbox.close()

    def _retry[T](self, fn: Callable[[], T]) -> T:
        # A short outage is ridden out here; a shutdown cuts the waits short (the message then
        # simply comes back).
        return retry(fn, attempts=4, backoff=Backoff(base=0.2), stop=self._stop)

    def retry_later(self, delivery: Delivery, why: str) -> None:
        """Not the job's fault (a dependency is down): leave the message to be redelivered."""
        logger.warning("job %s: %s; will be redelivered", delivery.message.job_id, why)
        self.stats.add(retried=1)
        if self._take_start(delivery) is not None:
            self._record_attempt(delivery)
        self.leases.drop([delivery])

    def _record_attempt(self, delivery: Delivery) -> None:
        """The job ran without a running mark and its outcome could not be written: count the attempt."""
        try:
            self.store.start(delivery.message.job_id, self.worker_id)
        except DependencyError as exc:  # the table is down: the attempt goes uncounted, nothing else is lost
            logger.info("job %s: attempt not recorded (%s)", delivery.message.job_id, exc)

    def _take_start(self, delivery: Delivery) -> Start | None:
        with self._folded_lock:
            return self._folded.pop(delivery.receipt, None)

    def _fold(self, deliveries: Sequence[Delivery]) -> bool:
        """Whether this batch folds its jobs' starts into their final writes (a short batch)."""
        jobs, seconds = self.stats.batched_jobs, self.stats.inference_seconds
        expected = len(deliveries) * seconds / jobs if jobs else 0.0  # this worker's own time per image
        return expected <= RUNNING_MARK_SECONDS

    # -- running -------------------------------------------------------------------------------

    def start(self, deliveries: Sequence[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """Start each job: ``(to run, already final)``.

        First deliveries of a short batch start without a write (their start is folded into the final
        write). The others are marked running, in parallel: a job that is already final (a duplicate
        delivery) or unknown is not run, and its message may be acked; one the table could not mark
        is left for redelivery and is in neither list.
        """
        fold = self._fold(deliveries)
        folded = [d for d in deliveries if fold and d.receive_count <= 1]
        if folded:
            start = Start(self.worker_id, time.time())
            with self._folded_lock:
                self._folded.update((d.receipt, start) for d in folded)
        taken = {d.receipt for d in folded}
        marked = [d for d in deliveries if d.receipt not in taken]
        outcomes = dict(zip((d.receipt for d in marked), self._pool.map(self._start_one, marked), strict=True))
        running = [d for d in deliveries if d.receipt in taken or outcomes.get(d.receipt) is True]
        final = [d for d in marked if outcomes[d.receipt] is False]
        return running, final

    def _start_one(self, delivery: Delivery) -> bool | None:
        job_id = delivery.message.job_id
        try:
            record = self._retry(lambda: self.store.start(job_id, self.worker_id))
        except DependencyError as exc:
            self.retry_later(delivery, f"could not mark running ({exc})")
            return None
        if record is None:  # final (a duplicate delivery, a cancel), or still queued past its deadline
            self.control.refused(delivery, ran=False)
            if self.outbox.republished(delivery):
                return False
            self.leases.drop([delivery])  # its event is not out yet: the message comes back for it
            return None
        return True

    # -- completion events ---------------------------------------------------------------------

    # -- final states --------------------------------------------------------------------------

    def succeed_all(self, results: Sequence[tuple[Delivery, dict[str, Any]]]) -> None:
        """Write every result (in parallel, conditional), then ack the batch in one call."""
        done = [d for d in self._pool.map(self._succeed_one, results) if d is not None]
        self.outbox.ack_when_announced(done)
        self.events.flush()  # one EMF blob per batch

    def _succeed_one(self, item: tuple[Delivery, dict[str, Any]]) -> Delivery | None:
        delivery, result = item
        job_id = delivery.message.job_id
        write = partial(self.store.succeed, job_id, result, start=self._folded_start(delivery))
        # This worker holds the message and deletes it only once the event is out: no outbox write.
        with self.store.message_held():
            ok = self._finish(delivery, JobStatus.SUCCEEDED, write, result=result)
        return delivery if ok else None

    def fail(self, delivery: Delivery, reason: str) -> bool:
        """Record a permanent failure; ``True`` when the message may be acked."""
        job_id = delivery.message.job_id
        write = partial(self.store.fail, job_id, reason, start=self._folded_start(delivery))
        done = self._finish(delivery, JobStatus.FAILED, write, error=reason)
        self.outbox.owes_nothing(delivery)  # acked by the caller either way: a failure owes on the record
        return done

    def _folded_start(self, delivery: Delivery) -> Start | None:
        with self._folded_lock:
            return self._folded.get(delivery.receipt)

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
        self._take_start(delivery)  # done with it, whatever the write's outcome
        if not wrote:  # final already (a duplicate delivery, a cancel), or still queued past its deadline
            self.control.refused(delivery, ran=True)
            self.outbox.reannounce(delivery)
            return True
        self.stats.add(succeeded=int(status is JobStatus.SUCCEEDED), failed=int(status is JobStatus.FAILED))
        self.events.final(delivery.message, status, result, error)
        if status is JobStatus.SUCCEEDED and result is not None and self.cache is not None:
            self.cache(delivery.message, result)
        # A job that did not succeed keeps its image, for a retry or a redrive after a fix.
        if status is JobStatus.SUCCEEDED and delivery.message.image_ref:
            self._drop_payload(delivery.message.image_ref)
        elif status is not JobStatus.SUCCEEDED:
            self.control.keep_image(delivery)
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
