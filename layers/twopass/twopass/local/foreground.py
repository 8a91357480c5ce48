"""A local stack in the foreground of a terminal: started, watched until a signal or a failure, then
stopped. ``python -m twopass.local`` and ``python -m twopass.local.samlocal`` both run this way."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

#: SIGHUP too: a closed terminal must not leave the children (in their own process groups) behind.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Foreground:
    """:meth:`start` the stack, then :meth:`watch` it; the caller stops it whatever they return.

    While starting, the first signal raises :class:`KeyboardInterrupt`, which unwinds the stack's
    start (it stops what it started: the children, in their own process groups, would otherwise
    outlive this process), once: a second Ctrl-C must not cut short the clean-up of the first.
    Once running, a signal only ends :meth:`watch`.
    """

    #: Said when a signal interrupted the start.
    interrupted: str
    #: Put before the error when the start failed.
    failed: str
    #: Names of the signals received.
    received: list[str] = field(default_factory=list)

    def start(self, start: Callable[[], object]) -> int | None:
        """Run ``start``; ``None`` once it succeeded, else the exit code (130 interrupted, 1 failed)."""
        self._handle(self._while_starting)
        try:
            start()
        except KeyboardInterrupt:
            print(self.interrupted, file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one clear line instead of a traceback (the children are stopped)
            print(f"{self.failed}: {exc}", file=sys.stderr)
            return 1
        self._handle(self._while_running)
        return None

    def watch(self, check: Callable[[], str | None], every: float) -> int:
        """Call ``check`` every ``every`` seconds until a signal (0) or it says why the stack cannot go
        on (said, 1)."""
        while not self.received:
            problem = check()
            if problem:
                print(problem, file=sys.stderr)
                return 1
            time.sleep(every)
        return 0

    def _handle(self, handler: Callable[[int, FrameType | None], None]) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, handler)

    def _while_starting(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
        if len(self.received) == 1:
            raise KeyboardInterrupt(self.received[0])

    def _while_running(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signal.Signals(signum).name)
