"""The messages a worker holds: extended while held, acknowledged when done, released when unstarted.

A message is held from receipt until it is acked (its job's final state is durable), released (never
started) or dropped (something failed in between: it comes back after its visibility timeout and the
store's conditional transitions make the redelivery harmless).

Acks are deleted ten to a call (SQS's batch limit) across batches: a batch of 8 leaves its deletes
waiting up to :data:`ACK_LINGER_SECONDS` for the next batch's, so a steady stream costs one delete
call per ten jobs instead of one per batch. Waiting is safe: the job is final already, so a message
whose delete is lost to a crash is a harmless duplicate; and the wait is far shorter than any
visibility timeout. Shutdown flushes what waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from twopass.exceptions import DependencyError
from twopass.queue.base import Delivery, MessageSource

logger = logging.getLogger(__name__)

#: Deletes one call takes (SQS's DeleteMessageBatch limit).
ACK_BATCH = 10
#: Longest an ack waits to share its delete call with later ones: longer than a CPU batch of 8, so
#: consecutive batches share calls there too, and a trickle of lone jobs shares them as well. A job is
#: final before its ack, so the wait only keeps its message in flight a little longer.
ACK_LINGER_SECONDS = 2.0
#: How often the keep-alive thread extends leases and sends lingering deletes.
KEEP_ALIVE_TICK = 0.5


class Leases:
    """Visibility bookkeeping for one worker over its :class:`MessageSource`."""

    def __init__(self, source: MessageSource, visibility_seconds: int) -> None:
        self.source = source
        self.visibility_seconds = visibility_seconds
        self._held: dict[tuple[str, str], Delivery] = {}
        self._held_lock = threading.Lock()
        # One visibility change at a time, so an extension computed before a release can never
        # land after it (that would hide a released message for a whole visibility timeout).
        self._visibility_lock = threading.Lock()
        #: Acked deliveries whose delete has not been sent yet, and when the oldest was acked.
        self._unsent: list[Delivery] = []
        self._unsent_since = 0.0
        self._ack_lock = threading.Lock()

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        with self._held_lock:
            for d in deliveries:
                self._held[d.key] = d

    def drop(self, deliveries: Sequence[Delivery]) -> None:
        """Stop extending: the messages come back after their visibility timeout."""
        with self._held_lock:
            for d in deliveries:
                self._held.pop(d.key, None)

    def last_attempt(self, delivery: Delivery) -> bool:
        """Whether a failure now sends the message to the dead-letter queue."""
        return self.source.last_attempt(delivery)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete messages whose jobs are final and durable: now when ten are waiting, else soon."""
        if not deliveries:
            return
        self.drop(deliveries)
        with self._ack_lock:
            if not self._unsent:
                self._unsent_since = time.monotonic()
            self._unsent.extend(deliveries)
            full = len(self._unsent) - len(self._unsent) % ACK_BATCH
            due, self._unsent = self._unsent[:full], self._unsent[full:]
            if due and self._unsent:  # what is left came with this call: its wait starts now
                self._unsent_since = time.monotonic()
        self._delete(due)

    def flush(self, linger: float = 0.0) -> None:
        """Send the waiting deletes, if the oldest has waited ``linger`` seconds."""
        with self._ack_lock:
            if not self._unsent or time.monotonic() - self._unsent_since < linger:
                return
            due, self._unsent = self._unsent, []
        self._delete(due)

    def _delete(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        try:
            self.source.ack(deliveries)
        except DependencyError as exc:  # the results are durable: a redelivery is a harmless duplicate
            logger.warning("ack of %d message(s) failed: %s", len(deliveries), exc)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Make unstarted messages visible again at once."""
        if not deliveries:
            return
        with self._visibility_lock:
            try:
                self.source.release(deliveries)
            except DependencyError as exc:
                logger.warning(
                    "could not release %d message(s) (%s); they reappear after visibility", len(deliveries), exc
                )
            self.drop(deliveries)

    def extend_due(self) -> None:
        """Extend every message held for more than half its visibility timeout."""
        with self._visibility_lock:
            now = time.monotonic()
            with self._held_lock:
                due = [d for d in self._held.values() if now - d.leased_at > self.visibility_seconds / 2]
            if not due:
                return
            try:
                self.source.extend(due, self.visibility_seconds)
            except DependencyError as exc:  # retried at the next tick, well before the lease runs out
                logger.warning("could not extend visibility of %d message(s): %s", len(due), exc)
                return
            for d in due:
                d.leased_at = now

    def keep_alive(self, stop: threading.Event, every: float = KEEP_ALIVE_TICK) -> None:
        """Thread body: :meth:`extend_due` and lingering deletes every ``every`` seconds until ``stop`` is set."""
        while not stop.wait(every):
            self.extend_due()
            self.flush(linger=ACK_LINGER_SECONDS)
