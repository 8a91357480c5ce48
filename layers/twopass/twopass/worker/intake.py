"""Receiving: long-polling receiver threads hand messages to the decode pool and on to the batcher.

On shutdown the receivers are not waited for: one may be blocked inside a long poll (up to 20 s in
botocore, which offers no way to cancel a request in flight). Each checks the intake's gate when its
poll returns; once the intake is closed it releases whatever that poll brought, at once. If the
process has exited by then, what the abandoned poll received stays invisible until its visibility
timeout and is then redelivered: delayed, never lost.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from twopass.backoff import Backoff
from twopass.config import Settings
from twopass.queue.base import Delivery, JobMessage, MessageSource
from twopass.worker.leases import Leases
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: Messages one receive asks for (SQS's maximum).
RECEIVE_BATCH = 10
#: Longest a receiver waits for the batcher before re-checking for a shutdown.
_HAND_OFF_TICK = 0.1
#: A receiver mid-hand-off finishes within a tick or two; this only bounds a bug.
_CLOSE_TIMEOUT = 5.0


@dataclass
class Item:
    """A received job on its way to the batcher, its image decoding in the background."""

    delivery: Delivery
    tensor: Future[np.ndarray]


class Intake:
    """Receivers → decode pool → :attr:`pending`, the bounded queue the batcher reads."""

    def __init__(
        self,
        source: MessageSource,
        leases: Leases,
        stats: WorkerStats,
        settings: Settings,
        *,
        decode: Callable[[JobMessage], np.ndarray],
        stop: threading.Event,
    ) -> None:
        self.source = source
        self.leases = leases
        self.stats = stats
        self.receivers = max(1, settings.receivers)
        self.poll_wait_seconds = settings.poll_wait_seconds
        self._decode = decode
        self._stop = stop
        self.pending: queue.Queue[Item] = queue.Queue(maxsize=max(2 * settings.max_batch_size, 20))
        #: Whether the last receive came back short (the queue had nothing more); read by the batcher.
        self.drained = True
        self._decode_pool = ThreadPoolExecutor(max(1, settings.decode_threads), thread_name_prefix="decode")
        self._gate = threading.Condition()
        self._closed = False
        self._handing_off = 0

    def start(self) -> None:
        for i in range(self.receivers):
            # Daemon threads: a receiver blocked in a long poll must not hold up the process's exit.
            threading.Thread(target=self._receive_loop, name=f"receiver-{i}", daemon=True).start()

    def close(self) -> list[Delivery]:
        """Stop taking messages in; returns those received but never handed to the model.

        Waits for receivers in the middle of a hand-off (a moment), never for one inside a poll.
        """
        with self._gate:
            self._closed = True
            if not self._gate.wait_for(lambda: self._handing_off == 0, timeout=_CLOSE_TIMEOUT):
                logger.error("%d receiver(s) still handing off after %.0fs", self._handing_off, _CLOSE_TIMEOUT)
        leftovers = []
        while True:
            try:
                leftovers.append(self.pending.get_nowait().delivery)
            except queue.Empty:
                break
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        return leftovers

    def _receive_loop(self) -> None:
        backoff = Backoff(base=0.5, cap=20.0)
        while not self._stop.is_set():
            try:
                deliveries = self.source.receive(RECEIVE_BATCH, self.poll_wait_seconds)
            except Exception as exc:  # noqa: BLE001 - network, throttling, credentials: keep trying, slower
                logger.warning("receive failed (%s); retrying with backoff", exc)
                backoff.wait(self._stop)
                continue
            backoff.reset()
            if not deliveries:
                self.drained = True
                continue
            self.stats.add(received=len(deliveries))
            if not self._admit(deliveries):
                return
            try:
                self._hand_off(deliveries)
            finally:
                with self._gate:
                    self._handing_off -= 1
                    self._gate.notify_all()

    def _admit(self, deliveries: Sequence[Delivery]) -> bool:
        """Hold the messages and count this receiver in, unless the intake is closed: then release them."""
        with self._gate:
            admitted = not self._closed
            if admitted:
                self._handing_off += 1
                self.leases.hold(deliveries)
        if not admitted:
            self.leases.release(deliveries)  # a poll that came back after shutdown began
        return admitted

    def _hand_off(self, deliveries: Sequence[Delivery]) -> None:
        self.drained = False  # more is on its way into pending
        for i, delivery in enumerate(deliveries):
            item = Item(delivery, self._decode_pool.submit(self._decode, delivery.message))
            if not self._put(item):
                self.leases.release(deliveries[i:])
                break
        # Set after the hand-off, so the batcher never sees "drained" with these still in hand.
        self.drained = len(deliveries) < RECEIVE_BATCH

    def _put(self, item: Item) -> bool:
        """Bounded hand-off: a full pipeline slows receiving down. ``False`` when stopping meanwhile."""
        while True:
            try:
                self.pending.put(item, timeout=_HAND_OFF_TICK)
                return True
            except queue.Full:
                if self._stop.is_set():
                    return False
