"""In-process queue implementing both interfaces: benchmarks run the worker with SQS out of the loop."""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Sequence
from typing import Any

from twopass.queue.base import Delivery, JobMessage, JobPublisher, MessageSource


class MemoryQueue(JobPublisher, MessageSource):
    """FIFO, at-least-once within the process: unacked deliveries come back after ``visibility``."""

    #: Publishing returns at once, never waiting on a network (see ``MemoryJobStore.blocking``).
    blocking = False

    def __init__(self, visibility: float = 60.0, max_receive_count: int | None = None, name: str = "m") -> None:
        self.visibility = visibility
        #: Prefix of message ids, so two queues in one process never hand out the same one.
        self.name = name
        self.max_receive_count = max_receive_count
        self._ready: collections.deque[tuple[str, JobMessage, int]] = collections.deque()
        self._in_flight: dict[str, tuple[str, JobMessage, int, float]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self.dead: list[JobMessage] = []
        self.acked = 0

    def publish(self, message: JobMessage) -> str:
        with self._cond:
            message_id = f"{self.name}{next(self._ids)}"
            self._ready.append((message_id, message, 0))
            self._cond.notify()
            return message_id

    def _requeue_expired(self) -> None:
        now = time.monotonic()
        for receipt, (mid, msg, count, deadline) in list(self._in_flight.items()):
            if deadline <= now:
                del self._in_flight[receipt]
                if self.max_receive_count is not None and count >= self.max_receive_count:
                    self.dead.append(msg)
                else:
                    self._ready.append((mid, msg, count))

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        deadline = time.monotonic() + wait_seconds
        with self._cond:
            while True:
                self._requeue_expired()
                if self._ready:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, 0.05))
            out: list[Delivery] = []
            while self._ready and len(out) < max_messages:
                mid, msg, count = self._ready.popleft()
                receipt = f"{mid}/{count + 1}"
                self._in_flight[receipt] = (mid, msg, count + 1, time.monotonic() + self.visibility)
                out.append(Delivery(mid, receipt, count + 1, msg))
            return out

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        with self._cond:
            for d in deliveries:
                if self._in_flight.pop(d.receipt, None) is not None:
                    self.acked += 1
        return []

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._cond:
            for d in deliveries:
                entry = self._in_flight.pop(d.receipt, None)
                if entry is not None:
                    self._ready.appendleft((entry[0], entry[1], entry[2]))
            self._cond.notify_all()

    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        with self._cond:
            for d in deliveries:
                entry = self._in_flight.get(d.receipt)
                if entry is not None:
                    self._in_flight[d.receipt] = (*entry[:3], time.monotonic() + seconds)

    def ping(self) -> dict[str, Any]:
        with self._cond:
            return {"visible": len(self._ready), "in_flight": len(self._in_flight)}

    def __len__(self) -> int:
        with self._cond:
            return len(self._ready) + len(self._in_flight)
