"""Receiving: long-polling receiver threads hand messages to the decode pool and on to the batcher.

A source may read several queues (:meth:`~twopass.queue.base.MessageSource.lanes`: the high-priority
queue and the normal one). Each lane has receivers of its own and a bounded lane in :class:`Pending`;
the batcher takes from the lanes by :class:`Share` — high-priority work first, normal work guaranteed
its share — so one queue's long poll never holds up the other's work.

On shutdown the receivers are not waited for: one may be blocked inside a long poll (up to 20 s in
botocore, which offers no way to cancel a request in flight). Each checks the intake's gate when its
poll returns; once the intake is closed it releases whatever that poll brought, at once. If the
process has exited by then, what the abandoned poll received stays invisible until its visibility
timeout and is then redelivered: delayed, never lost.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from twopass.backoff import Backoff
from twopass.config import Settings
from twopass.exceptions import ConfigError
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


class Share:
    """Which lane the batcher serves next: the most urgent lane with work, except that while the
    normal lane has work too it is owed ``normal_share`` of the jobs taken, so it never starves.

    Credit-based: each take made while both lanes wait earns the normal lane ``normal_share``; a
    whole credit buys it the next take. With 0.25 that is three high-priority jobs, then a normal one.
    """

    def __init__(self, lanes: Sequence[str], normal_share: float) -> None:
        if not 0 < normal_share < 1:
            raise ConfigError(f"TWOPASS_NORMAL_SHARE={normal_share} must lie between 0 and 1 (exclusive)")
        self.lanes = tuple(lanes)
        self.normal_share = normal_share
        self._credit = 0.0

    def choose(self, waiting: Sequence[str]) -> str:
        """The lane to take from, among the non-empty ``waiting`` ones (in :attr:`lanes` order)."""
        if len(waiting) == 1:
            return waiting[0]  # only one lane has work: no share is owed while the other is empty
        self._credit += self.normal_share
        if self._credit >= 1:
            self._credit -= 1
            return waiting[-1]  # the normal lane's turn
        return waiting[0]


class Pending:
    """Received jobs waiting for the batcher: one bounded queue per lane, taken from by :class:`Share`."""

    def __init__(self, lanes: Sequence[str], capacity: int, share: Share) -> None:
        self._queues: dict[str, collections.deque[Item]] = {lane: collections.deque() for lane in lanes}
        self._capacity = capacity
        self._share = share
        self._cond = threading.Condition()

    def put(self, lane: str, item: Item, timeout: float) -> bool:
        """Add ``item`` when its lane has room within ``timeout``; ``False`` if it never had."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._queues[lane]) < self._capacity, timeout):
                return False
            self._queues[lane].append(item)
            self._cond.notify_all()
            return True

    def take(self, timeout: float = 0.0) -> Item | None:
        """The next job by priority and share, waiting up to ``timeout`` for one; ``None`` if none came."""
        with self._cond:
            if not self._cond.wait_for(lambda: any(self._queues.values()), timeout):
                return None
            lane = self._share.choose([name for name, q in self._queues.items() if q])
            item = self._queues[lane].popleft()
            self._cond.notify_all()
            return item

    def clear(self) -> list[Item]:
        """Everything still waiting, in lane order; the lanes are left empty."""
        with self._cond:
            items = [item for q in self._queues.values() for item in q]
            for q in self._queues.values():
                q.clear()
            self._cond.notify_all()
            return items

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._queues.values())


class Intake:
    """Receivers (per lane) → decode pool → :attr:`pending`, the bounded lanes the batcher reads."""

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
        self.lanes = source.lanes()
        self.pending = Pending(
            self.lanes, max(2 * settings.max_batch_size, 20), Share(self.lanes, settings.normal_share)
        )
        self._drained = dict.fromkeys(self.lanes, True)
        self._decode_pool = ThreadPoolExecutor(max(1, settings.decode_threads), thread_name_prefix="decode")
        self._gate = threading.Condition()
        self._closed = False
        self._handing_off = 0

    @property
    def drained(self) -> bool:
        """Whether the last receive of every lane came back short (nothing more queued); read by the batcher."""
        return all(self._drained.values())

    def start(self) -> None:
        for lane in self.lanes:
            for i in range(self.receivers):
                # Daemon threads: a receiver blocked in a long poll must not hold up the process's exit.
                name = f"receiver-{i}" if len(self.lanes) == 1 else f"receiver-{lane}-{i}"
                threading.Thread(target=self._receive_loop, args=(lane,), name=name, daemon=True).start()

    def close(self) -> list[Delivery]:
        """Stop taking messages in; returns those received but never handed to the model.

        Waits for receivers in the middle of a hand-off (a moment), never for one inside a poll.
        """
        with self._gate:
            self._closed = True
            if not self._gate.wait_for(lambda: self._handing_off == 0, timeout=_CLOSE_TIMEOUT):
                logger.error("%d receiver(s) still handing off after %.0fs", self._handing_off, _CLOSE_TIMEOUT)
        leftovers = [item.delivery for item in self.pending.clear()]
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        return leftovers

    def _receive_loop(self, lane: str) -> None:
        backoff = Backoff(base=0.5, cap=20.0)
        while not self._stop.is_set():
            try:
                deliveries = self.source.receive_lane(lane, RECEIVE_BATCH, self.poll_wait_seconds)
            except Exception as exc:  # noqa: BLE001 - network, throttling, credentials: keep trying, slower
                logger.warning("receive (%s) failed (%s); retrying with backoff", lane, exc)
                backoff.wait(self._stop)
                continue
            backoff.reset()
            if not deliveries:
                self._drained[lane] = True
                continue
            self.stats.add(received=len(deliveries))
            if not self._admit(deliveries):
                return
            try:
                self._hand_off(lane, deliveries)
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

    def _hand_off(self, lane: str, deliveries: Sequence[Delivery]) -> None:
        self._drained[lane] = False  # more is on its way into pending
        for i, delivery in enumerate(deliveries):
            item = Item(delivery, self._decode_pool.submit(self._decode, delivery.message))
            if not self._put(lane, item):
                self.leases.release(deliveries[i:])
                break
        # Set after the hand-off, so the batcher never sees "drained" with these still in hand.
        self._drained[lane] = len(deliveries) < RECEIVE_BATCH

    def _put(self, lane: str, item: Item) -> bool:
        """Bounded hand-off: a full lane slows its receivers down. ``False`` when stopping meanwhile."""
        while True:
            if self.pending.put(lane, item, _HAND_OFF_TICK):
                return True
            if self._stop.is_set():
                return False
