"""Two queues as one: high-priority jobs in a queue of their own, normal jobs in another.

Each lane keeps its own queue (and so its own dead-letter queue and redrive policy); a delivery
remembers its lane, so acks, releases and extensions go back to the queue it came from. Which lane
the worker serves next is the worker's decision (:class:`twopass.worker.intake.Share`); these
classes only route. :class:`PriorityPublisher` sends each job to its priority's queue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from twopass.queue.base import HIGH, NORMAL, Delivery, JobMessage, JobPublisher, MessageSource


class PriorityPublisher(JobPublisher):
    """Publishes a job to the high-priority or the normal queue, by the message's ``priority``."""

    def __init__(self, high: JobPublisher, normal: JobPublisher) -> None:
        self._publishers = {HIGH: high, NORMAL: normal}

    def publish(self, message: JobMessage) -> str:
        return self._publishers[message.priority].publish(message)

    def ping(self) -> dict[str, Any]:
        """Both queues' figures added up (``visible``, ``in_flight``): the backlog as a whole."""
        total: dict[str, Any] = {}
        for counts in (publisher.ping() for publisher in self._publishers.values()):
            for name, value in counts.items():
                total[name] = total.get(name, 0) + int(value)
        return total


class PrioritySource(MessageSource):
    """The high-priority and the normal queue behind one :class:`MessageSource`."""

    def __init__(self, high: MessageSource, normal: MessageSource) -> None:
        self._sources = {HIGH: high, NORMAL: normal}
        # The stricter of the two: used only by callers that ask the source as a whole.
        counts = [s.max_receive_count for s in self._sources.values() if s.max_receive_count is not None]
        self.max_receive_count = min(counts) if counts else None

    def lanes(self) -> tuple[str, ...]:
        return (HIGH, NORMAL)

    def lane(self, name: str) -> MessageSource:
        return self._sources[name]

    def receive_lane(self, lane: str, max_messages: int, wait_seconds: float) -> list[Delivery]:
        return [replace(d, lane=lane) for d in self._sources[lane].receive(max_messages, wait_seconds)]

    def receive(self, max_messages: int, wait_seconds: float) -> list[Delivery]:
        """High-priority messages first; the normal queue fills what is left (and waits, if need be)."""
        out = self.receive_lane(HIGH, max_messages, 0)
        if len(out) < max_messages:
            out += self.receive_lane(NORMAL, max_messages - len(out), 0 if out else wait_seconds)
        return out

    def _by_lane(self, deliveries: Sequence[Delivery]) -> dict[str, list[Delivery]]:
        groups: dict[str, list[Delivery]] = {}
        for d in deliveries:
            groups.setdefault(d.lane, []).append(d)
        return groups

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        failed: list[Delivery] = []
        for lane, group in self._by_lane(deliveries).items():
            failed += self._sources[lane].ack(group)
        return failed

    def release(self, deliveries: Sequence[Delivery]) -> None:
        for lane, group in self._by_lane(deliveries).items():
            self._sources[lane].release(group)

    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        for lane, group in self._by_lane(deliveries).items():
            self._sources[lane].extend(group, seconds)

    def last_attempt(self, delivery: Delivery) -> bool:
        return self._sources[delivery.lane].last_attempt(delivery)
