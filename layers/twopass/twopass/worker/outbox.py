"""The worker's event outbox: a result's message is acked only once its job's completion event is out.

The queue message is the outbox (see :mod:`twopass.worker.recorder`): a worker killed between the
final write and the event leaves the message to come back, and the worker that meets the job final
then publishes its event again (:meth:`EventOutbox.republished`) before deleting it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twopass.exceptions import DependencyError
from twopass.jobs.base import JobStatus, JobStore
from twopass.queue.base import Delivery
from twopass.worker.leases import Leases

logger = logging.getLogger(__name__)

#: Longest a redelivered final job's message waits for its event to be published again before it is
#: left to come back later instead (longer than the publisher's retries take).
REANNOUNCE_WAIT_SECONDS = 10.0
#: Longest closing waits for the events of results written, so their messages are deleted.
CLOSE_WAIT_SECONDS = 10.0


class EventOutbox:
    """Acks deliveries once their jobs' events are published; publishes a final job's event again."""

    def __init__(self, store: JobStore, leases: Leases, *, retry: Callable[[Callable[[], Any]], Any]) -> None:
        self.store = store
        self.leases = leases
        self._retry = retry
        self._lock = threading.Lock()
        #: Deliveries met final whose job had nothing to announce (unknown, or not final): acked at once.
        self._unowed: set[tuple[str, str]] = set()
        #: Batches of results whose messages wait for their jobs' events (see :meth:`ack_when_announced`).
        self._awaiting = 0
        self._awaiting_cond = threading.Condition()

    def close(self) -> None:
        """Wait a while for the last results' events (the publisher still runs), so their messages are
        deleted now rather than redelivered (and their events published twice) later."""
        with self._awaiting_cond:
            if not self._awaiting_cond.wait_for(lambda: self._awaiting == 0, CLOSE_WAIT_SECONDS):
                logger.warning("%d batch(es) still waiting for their events; their messages come back", self._awaiting)

    def reannounce(self, delivery: Delivery) -> bool | None:
        """Publish a final job's event again: the worker that wrote the final state may have died
        before its event went out, and this redelivered message is all that is left of that debt.

        Only a success is written by a message's holder (``Recorder``'s results); every other final
        state owes its event on the record until published, so it is published again only while
        ``event_owed`` says so (a cancel's event, say, is not sent twice as a matter of course).

        ``True``: announced; ``False``: nothing to announce (an unknown job, one not final, one whose
        event is settled), and the message may be acked as before; ``None``: the job could not be
        read (the message comes back).
        """
        job_id = delivery.message.job_id
        try:
            record = self._retry(lambda: self.store.get(job_id))
        except DependencyError as exc:
            logger.info("job %s: final, and could not be read to publish its event (%s)", job_id, exc)
            return None
        carried = record is not None and record.status is JobStatus.SUCCEEDED
        if record is None or not record.final or not (carried or record.event_owed):
            with self._lock:
                self._unowed.add(delivery.key)
            return False
        self.store.reannounce(record)
        return True

    def republished(self, delivery: Delivery) -> bool:
        """Publish the event of a job met final again and wait until it is out (``False``: not in time)."""
        job_id = delivery.message.job_id
        announced = self.reannounce(delivery)
        if announced is not True:
            return self.owes_nothing(delivery)
        out: set[str] = set()
        done = threading.Event()

        def settled(published: set[str]) -> None:
            out.update(published)
            done.set()

        self.store.when_announced([job_id], settled)
        return done.wait(REANNOUNCE_WAIT_SECONDS) and job_id in out

    def owes_nothing(self, delivery: Delivery) -> bool:
        """Whether :meth:`reannounce` found nothing to announce for ``delivery`` (and forget it)."""
        with self._lock:
            found = delivery.key in self._unowed
            self._unowed.discard(delivery.key)
        return found

    def ack_when_announced(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries`` once their jobs' events are published; those whose event was not are
        dropped instead (their messages come back, and their events with them)."""
        unowed = [d for d in deliveries if self.owes_nothing(d)]
        self.leases.ack(unowed)
        deliveries = [d for d in deliveries if d not in unowed]
        if not deliveries:
            return
        with self._awaiting_cond:
            self._awaiting += 1

        def settled(published: set[str]) -> None:
            try:
                self.leases.ack([d for d in deliveries if d.message.job_id in published])
                unsent = [d for d in deliveries if d.message.job_id not in published]
                if unsent:
                    logger.warning("%d job(s)' events not published; their messages come back", len(unsent))
                    self.leases.drop(unsent)
            finally:
                with self._awaiting_cond:
                    self._awaiting -= 1
                    self._awaiting_cond.notify_all()

        self.store.when_announced([d.message.job_id for d in deliveries], settled)
