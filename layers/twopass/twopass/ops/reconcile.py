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


@dataclass
class ReconcileReport:
    candidates: int = 0
    republished: int = 0
    failed: int = 0


class Reconciler:
    """Republishes or fails never-started jobs whose queue message certainly does not exist."""

    def __init__(
        self,
        store: JobStore,
        publisher: JobPublisher,
        *,
        after_seconds: float,
        retention_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.after_seconds = after_seconds
        self.retention_seconds = retention_seconds
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
        return report

    def _resolve(self, record: JobRecord, report: ReconcileReport) -> None:
        if record.image_ref:
            message = JobMessage(
                job_id=record.job_id,
                image_ref=record.image_ref,
                context=dict(record.context or {}),
                # Back to its own queue (a PriorityPublisher routes it), its deadline still in force.
                priority=record.priority,
                deadline_at=record.deadline_at,
            )
            self.publisher.publish(message)
            report.republished += 1
            logger.warning("job %s: never started and no message in the queue; republished", record.job_id)
        elif self.store.fail(record.job_id, LOST_REASON, only_if_queued=True):
            report.failed += 1
            logger.warning("job %s: never started and no message in the queue; failed", record.job_id)
