"""Supervision of a local stack's children: a worker that died is restarted after a backoff; any
other child dying (the API, the emulator, which holds every job) is the end of the stack."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from twopass.backoff import Backoff
from twopass.local.processes import WORKER_PREFIX, describe_exit

logger = logging.getLogger("twopass.local")

#: A worker that stayed up this long before dying is restarted after the shortest delay again.
WORKER_STABLE_SECONDS = 60.0

#: Starts (or restarts) the worker of this name.
StartWorker = Callable[[str], subprocess.Popen[bytes]]


@dataclass
class _Restarts:
    """Restart bookkeeping of one worker."""

    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=30.0))
    started: float = 0.0
    due: float | None = None
    count: int = 0


@dataclass
class WorkerRestarts:
    """Restart bookkeeping of every worker: when each started, when its restart is due, how many so far."""

    _workers: dict[str, _Restarts] = field(default_factory=dict)

    def started(self, name: str) -> None:
        """Note that worker ``name`` (re)started now."""
        self._workers.setdefault(name, _Restarts()).started = time.monotonic()

    def supervise(self, procs: Mapping[str, subprocess.Popen[bytes]], start_worker: StartWorker) -> list[str]:
        """One round: schedule or carry out the restart of each worker that exited (1 s, 2 s, 4 s … 30 s;
        back to 1 s once a worker stayed up for a minute), each step logged. Returns why the stack
        cannot go on: the other children that exited (empty while all is well)."""
        now = time.monotonic()
        fatal: list[str] = []
        for name, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                continue
            if name.startswith(WORKER_PREFIX):
                self._worker_exited(name, code, now, start_worker)
            else:
                fatal.append(f"the {'API' if name == 'api' else name} exited ({describe_exit(code)})")
        return fatal

    def _worker_exited(self, name: str, code: int, now: float, start_worker: StartWorker) -> None:
        state = self._workers.setdefault(name, _Restarts())
        if state.due is None:
            if now - state.started >= WORKER_STABLE_SECONDS:
                state.backoff.reset()
            delay = state.backoff.next_delay()
            state.due = now + delay
            logger.warning("%s exited (%s); restarting it in %.0f s", name, describe_exit(code), delay)
        elif now >= state.due:
            state.due = None
            state.count += 1
            restarted = start_worker(name)
            logger.warning("%s restarted (pid %d, restart %d)", name, restarted.pid, state.count)

    def counts(self) -> dict[str, int]:
        """How many times each worker was restarted."""
        return {name: state.count for name, state in self._workers.items()}

    def clear(self) -> None:
        self._workers.clear()
