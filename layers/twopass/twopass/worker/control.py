"""Job control on the worker's side: deadlines, cancelled jobs, and the images kept for a retry.

* A job whose deadline has passed before it started is never run: it is marked ``expired`` (with a
  reason, counted in the ``JobsExpired`` metric) and its message deleted, before its batch reaches
  the model. The store refuses to start such a job too, so a deadline that passes while the batch
  waits for the model is caught by the same conditional writes.
* A write the store refused (a start, a result) is explained by reading the job once: a job
  cancelled before it ran is skipped, one cancelled while it ran has its result discarded; neither
  is a failure or a duplicate, and neither sends a completion event.
* The image of a job that did not succeed (failed, cancelled, expired) is kept so that
  ``POST /job/{id}/retry`` can run it again: a claim-checked image already is (the worker deletes it
  only after a success); an inline one is put into the payload bucket and recorded on the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from twopass.exceptions import DependencyError, TwopassError
from twopass.jobs.base import JobRecord, JobStatus, JobStore
from twopass.observability.logs import job_extra
from twopass.payloads import PayloadStore
from twopass.queue.base import Delivery
from twopass.worker.events import WorkerEvents
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: The error an expired job shows (``GET /job``), with the deadline appended.
EXPIRED_REASON = "not started before its deadline"


def expired_reason(deadline_at: float | None) -> str:
    if deadline_at is None:
        return EXPIRED_REASON
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline_at))
    return f"{EXPIRED_REASON} ({stamp}); retry it to run it now"


class JobControl:
    """Expires late jobs, tells cancelled jobs from duplicates, keeps the images of jobs that did not succeed."""

    def __init__(
        self,
        store: JobStore,
        payloads: PayloadStore,
        events: WorkerEvents,
        stats: WorkerStats,
        retry: Callable[[Callable[[], object]], object] | None = None,
    ) -> None:
        self.store = store
        self.payloads = payloads
        self.events = events
        self.stats = stats
        self._retry: Callable[[Callable[[], object]], object] = retry or (lambda fn: fn())

    # -- deadlines -----------------------------------------------------------------------------

    def expire_late(self, deliveries: Sequence[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        """``(to start, done)``: jobs past their deadline are expired and may be acked, unrun.

        A late job the store will not expire (one a previous delivery started in time, or one that
        is final already) goes on to be started: the store decides what becomes of it there.
        """
        now = time.time()
        start: list[Delivery] = []
        done: list[Delivery] = []
        for delivery in deliveries:
            if delivery.message.past_deadline(now) and self._expire(delivery):
                done.append(delivery)
            else:
                start.append(delivery)
        if done:
            self.events.flush()
        return start, done

    def _expire(self, delivery: Delivery) -> bool:
        message = delivery.message
        reason = expired_reason(message.deadline_at)
        try:
            if not self._retry(lambda: self.store.expire(message.job_id, reason)):
                return False
        except DependencyError as exc:  # the start that follows meets the same table and retries later
            logger.warning("job %s: could not mark expired (%s)", message.job_id, exc)
            return False
        self.stats.add(expired=1)
        self.events.final(message, JobStatus.EXPIRED, None, reason)
        self.keep_image(delivery)
        return True

    # -- refused writes ------------------------------------------------------------------------

    def refused(self, delivery: Delivery, *, ran: bool) -> None:
        """The store refused to start the job (``ran=False``) or to record its result (``ran=True``).

        Reads the job once to say why: cancelled (skipped, or its result discarded), still queued past
        its deadline (expired now), or final already (a duplicate delivery). The message may be acked.
        """
        job_id = delivery.message.job_id
        extra = job_extra(job_id, delivery.message.context.get("request_id"))
        try:
            record = self._retry(lambda: self.store.get(job_id))
        except DependencyError as exc:  # it is final or unknown either way: only the bookkeeping is lost
            logger.info("job %s: refused, and could not read why (%s)", job_id, exc)
            self.stats.add(duplicates=1)
            return
        if not isinstance(record, JobRecord):
            self.stats.add(duplicates=1)  # unknown, or past its retention
        elif record.status is JobStatus.QUEUED and record.past_deadline():
            if not self._expire(delivery):
                self.stats.add(duplicates=1)
        elif record.status is JobStatus.CANCELLED:
            if ran:
                self.stats.add(discarded=1)
                logger.info("job %s was cancelled while it ran; its result is discarded", job_id, extra=extra)
            else:
                self.stats.add(cancelled=1)
                logger.info("job %s was cancelled; skipped", job_id, extra=extra)
            self.keep_image(delivery, record)
        else:
            self.stats.add(duplicates=1)  # final already: another delivery of the same job finished it
            if record.status is not JobStatus.SUCCEEDED:
                self.keep_image(delivery, record)

    # -- images kept for a retry ---------------------------------------------------------------

    def keep_image(self, delivery: Delivery, record: JobRecord | None = None) -> None:
        """Keep the image of a job that did not succeed, for ``POST /job/{id}/retry`` (best effort)."""
        message = delivery.message
        if message.image is None or (record is not None and record.image_ref):
            return  # a claim check is kept already; or this job's image was kept before
        if not self.payloads.bucket:
            return  # no bucket: such a job cannot be retried (the API answers image_gone)
        try:
            ref = self.payloads.put(self.payloads.bucket, message.job_id, message.image)
            if not self.store.keep_image(message.job_id, ref):
                logger.info("job %s: image not recorded (the job has one, or succeeded meanwhile)", message.job_id)
        except TwopassError as exc:  # the job's outcome stands; only a retry will be refused
            logger.warning("job %s: could not keep its image for a retry (%s)", message.job_id, exc)
