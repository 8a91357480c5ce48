"""The reconciler: no accepted job stays ``queued`` forever because an outage lost its message.

The API writes a job's record before it publishes the message. If the backends stall between the
two (or the outcome of either is unknown) and the API cannot even mark the job failed, a record is
left ``queued`` with no message behind it. Such a job was never started, so it sits in the table's
sparse ``pending-created`` index; the worker calls :meth:`Reconciler.run` periodically to find them.

A never-started job older than ``after_seconds`` certainly has no message when

* the job queue has held no message at all (visible or in flight) at two consecutive passes — two,
  because SQS's counts are approximate and may lag; or
* it is older than the queue's retention period, after which SQS has deleted any message anyway.

Otherwise its message may still be waiting in a backlog, and it is left alone for a later pass.
A certain orphan whose image is still retained (a claim check in S3) is published again; one whose
image travelled only inside the lost message is failed with a reason the client can act on.

Each pass also settles the completion events still owed: a final state written by a writer that
held no queue message (a cancel, an answer at once, the sweep, this reconciler) records its event
as owed in the same write, and the publisher clears that once PutEvents accepted it. One still
owed ``owed_after_seconds`` after the write lost its publisher (a crash, a frozen Lambda, a long
EventBridge outage) and is announced again here (consumers de-duplicate by ``detail.event_id``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from twopass.jobs.base import JobRecord, JobStore
from twopass.queue.base import JobMessage, JobPublisher

logger = logging.getLogger(__name__)

LOST_REASON = (
    "lost: the job's queue message was lost during a backend outage and its image was not kept; submit it again"
)
#: How long after its final write an owed event is taken for lost: far longer than a publisher's
#: retries take, so an event on its way is not published twice for nothing.
OWED_AFTER_SECONDS = 60.0


@dataclass
class ReconcileReport:
    candidates: int = 0
    republished: int = 0
    failed: int = 0
    #: Completion events found still owed and announced again.
    reannounced: int = 0


class Reconciler:
    """Republishes or fails never-started jobs whose queue message certainly does not exist."""

    def __init__(
        self,
        store: JobStore,
        publisher: JobPublisher,
        *,
        after_seconds: float,
        retention_seconds: float,
        owed_after_seconds: float = OWED_AFTER_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.after_seconds = after_seconds
        self.retention_seconds = retention_seconds
        self.owed_after_seconds = owed_after_seconds
        self.clock = clock
        self._queue_was_empty = False
        #: Jobs this reconciler republished: not again while their new message may still wait in
        #: the queue (several workers may each republish one once; the store's conditional
        #: transitions make the duplicate harmless).
        self._republished: dict[str, float] = {}

    def _queue_empty(self) -> bool:
        counts = self.publisher.ping()
        # A backend that reports no counts can never be known to be empty.
        empty_now = bool(counts) and sum(int(v) for v in counts.values()) == 0
        empty_twice = empty_now and self._queue_was_empty
        self._queue_was_empty = empty_now
        return empty_twice

    def run(self, limit: int = 100) -> ReconcileReport:
        """One pass; raises ``DependencyError`` when the table or queue is unavailable (try again later)."""
        now = self.clock()
        candidates = self.store.never_started(now - self.after_seconds, limit)
        report = ReconcileReport(candidates=len(candidates))
        quiet = self._queue_empty()  # read every pass, so "twice in a row" means consecutive passes
        self._republished = {j: t for j, t in self._republished.items() if t > now - self.retention_seconds}
        for record in candidates:
            if record.job_id in self._republished:
                continue
            if quiet or record.created_at < now - self.retention_seconds:
                self._resolve(record, report)
                if record.image_ref:
                    self._republished[record.job_id] = now
        self._settle_owed_events(now, limit, report)
        return report

    def _settle_owed_events(self, now: float, limit: int, report: ReconcileReport) -> None:
        """Announce again the final states whose events are still owed long after their write."""
        for record in self.store.owed_events(now - self.owed_after_seconds, limit):
            self.store.reannounce(record)
            report.reannounced += 1
            logger.warning("job %s: its %s event was still owed; published again", record.job_id, record.status)

    def _resolve(self, record: JobRecord, report: ReconcileReport) -> None:
        if record.image_ref:
            message = JobMessage(
                job_id=record.job_id,
                image_ref=record.image_ref,
                context=dict(record.context or {}),
                # Back to its own queue (a PriorityPublisher routes it), its deadline still in force.
                priority=record.priority,
                deadline_at=record.deadline_at,
                run=record.run,
            )
            self.publisher.publish(message)
            report.republished += 1
            logger.warning("job %s: never started and no message in the queue; republished", record.job_id)
        elif self.store.fail(record.job_id, LOST_REASON, only_if_queued=True):
            report.failed += 1
            logger.warning("job %s: never started and no message in the queue; failed", record.job_id)
