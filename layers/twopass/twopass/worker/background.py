"""The worker's periodic chores, each a thread body that returns once ``stop`` is set."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from twopass.jobs.base import JobStore
from twopass.worker.chores.reconcile import Reconciler
from twopass.worker.events import WorkerEvents
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)


def heartbeat(
    store: JobStore, worker_id: str, info: dict[str, Any], stats: WorkerStats, every: float, stop: threading.Event
) -> None:
    """Record that the worker is alive, with its model and counters, every ``every`` seconds."""
    while True:
        try:
            store.beat(worker_id, {**info, **stats.summary()})
        except Exception as exc:  # noqa: BLE001 - best effort; the next beat tries again
            logger.warning("heartbeat failed: %s", exc)
        if stop.wait(every):
            return


def sweep_dead_letters(sweeper: Callable[[], int], events: WorkerEvents, every: float, stop: threading.Event) -> None:
    """Mark jobs found in the dead-letter queue failed, every ``every`` seconds (see ops.deadletter)."""
    while not stop.wait(every):
        try:
            if marked := sweeper():
                events.dead_lettered(marked)
        except Exception as exc:  # noqa: BLE001 - best effort; the next sweep tries again
            logger.warning("dead-letter sweep failed: %s", exc)


def reconcile_orphans(reconciler: Reconciler, every: float, stop: threading.Event) -> None:
    """Republish or fail never-started jobs whose message an outage lost, every ``every`` seconds."""
    while not stop.wait(every):
        try:
            reconciler.run()
        except Exception as exc:  # noqa: BLE001 - best effort; the next pass tries again
            logger.warning("reconciler pass failed: %s", exc)
