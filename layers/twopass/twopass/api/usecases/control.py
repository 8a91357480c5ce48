"""What a client may ask of its job on ``POST /predict`` (deadline, priority, what to do when overloaded),
and the cached queue depth that decides when the service is overloaded.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import PriorityName
from twopass.config import Settings
from twopass.exceptions import DependencyError

logger = logging.getLogger(__name__)

#: ``shed``: above the backlog limit answer with the fast model alone; ``reject``: answer 429 instead.
OverloadChoice = Literal["shed", "reject"]


@dataclass(frozen=True)
class JobOptions:
    """The job's options as the request gave them (``None``: not given, the service's default applies)."""

    deadline_seconds: float | None = None
    priority: PriorityName | None = None
    on_overload: OverloadChoice | None = None

    def over(self, fallback: JobOptions) -> JobOptions:
        """These options, each missing one taken from ``fallback`` (the JSON body's fields win over the query's)."""
        return JobOptions(
            self.deadline_seconds if self.deadline_seconds is not None else fallback.deadline_seconds,
            self.priority or fallback.priority,
            self.on_overload or fallback.on_overload,
        )

    @property
    def rejects(self) -> bool:
        return self.on_overload == "reject"

    def deadline_at(self, settings: Settings, now: float | None = None) -> float | None:
        """Epoch seconds by which the job must have started, or ``None`` for no deadline.

        1 s to the queue's retention: past the retention the queue drops the message anyway.
        """
        seconds = self.deadline_seconds
        if seconds is None:
            seconds = settings.default_deadline_seconds or None
            if seconds is None:
                return None
        longest = settings.queue_retention_seconds
        if not math.isfinite(seconds) or not 1 <= seconds <= longest:
            detail = f"deadline_seconds: must be 1 to {longest} (the queue's retention), got {seconds:g}"
            raise HTTPProblemError(422, "validation_error", detail)
        return (time.time() if now is None else now) + seconds


class BacklogGauge:
    """The queues' approximate depth, read at most once per ``ttl`` seconds whatever the request rate.

    A request that finds the figure stale refreshes it; requests arriving meanwhile keep using the
    previous figure rather than each calling SQS. When the queues cannot be read the gauge says
    "unknown" (``None``): the service then takes the job rather than refusing work on a guess (the
    enqueue will tell if SQS is really down).
    """

    def __init__(self, read: Callable[[], int], ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self.ttl = ttl
        self._clock = clock
        self._value: int | None = None
        self._read_at = -math.inf
        self._lock = threading.Lock()
        #: How many times the queues were actually read (tests hold it to one per ``ttl``).
        self.reads = 0

    @property
    def fresh(self) -> bool:
        return self._clock() - self._read_at < self.ttl

    @property
    def value(self) -> int | None:
        """The last figure read, however old."""
        return self._value

    def refresh(self) -> int | None:
        """The figure, read again if stale (blocking: call it off the event loop)."""
        if not self._lock.acquire(blocking=False):
            return self._value  # another request is reading it right now
        try:
            if self.fresh:
                return self._value
            try:
                self._value = self._read()
            except DependencyError as exc:
                logger.warning("queue depth unknown (%s); not shedding on it", exc)
                self._value = None
            self.reads += 1
            # Stamped even after a failure: a queue that cannot be read is not asked once per request.
            self._read_at = self._clock()
            return self._value
        finally:
            self._lock.release()
