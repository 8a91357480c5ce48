"""The messages a worker holds: extended while held, acknowledged when done, released when unstarted.

A message is held from receipt until it is acked (its job's final state is durable), released (never
started) or dropped (something failed in between: it comes back after its visibility timeout and the
store's conditional transitions make the redelivery harmless).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from twopass.exceptions import DependencyError
from twopass.queue.base import Delivery, MessageSource

logger = logging.getLogger(__name__)


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
        """Delete messages whose jobs are final and durable."""
        if not deliveries:
            return
        try:
            self.source.ack(deliveries)
        except DependencyError as exc:  # the results are durable: a redelivery is a harmless duplicate
            logger.warning("ack of %d message(s) failed: %s", len(deliveries), exc)
        self.drop(deliveries)

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

    def keep_alive(self, stop: threading.Event, every: float = 1.0) -> None:
        """Thread body: :meth:`extend_due` every ``every`` seconds until ``stop`` is set."""
        while not stop.wait(every):
            self.extend_due()
