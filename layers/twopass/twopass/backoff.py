"""One retry policy for every loop that waits on a dependency: capped exponential backoff.

The worker's store writes, its receive loop and the callback sender all back off the same way;
each passes a stop event so a shutdown interrupts the wait at once instead of sleeping it out.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from twopass.exceptions import DependencyError


@dataclass
class Backoff:
    """Delays ``base, 2·base, 4·base, …`` capped at ``cap``; with ``jitter`` each is drawn from ``[0, delay]``.

    Full jitter spreads clients that failed together so they do not come back together.
    """

    base: float = 0.2
    cap: float = 20.0
    jitter: bool = False
    attempt: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def next_delay(self) -> float:
        """The delay before the next try (and count this try)."""
        delay = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt += 1
        return self._rng.uniform(0.0, delay) if self.jitter else delay

    def reset(self) -> None:
        """A call succeeded: the next failure starts from ``base`` again."""
        self.attempt = 0

    def wait(self, stop: threading.Event | None = None) -> bool:
        """Sleep the next delay; ``True`` when ``stop`` was set meanwhile (give up)."""
        delay = self.next_delay()
        if stop is None:
            threading.Event().wait(delay)
            return False
        return stop.wait(delay)


def retry[T](
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    backoff: Backoff | None = None,
    stop: threading.Event | None = None,
    retry_on: tuple[type[BaseException], ...] = (DependencyError,),
) -> T:
    """``fn()``, called again after a backoff while it raises ``retry_on``; the last error propagates.

    A set ``stop`` ends the retries early (the error propagates then too).
    """
    policy = backoff or Backoff()
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on:
            if attempt == attempts - 1 or policy.wait(stop):
                raise
    raise AssertionError("unreachable: attempts must be at least 1")
