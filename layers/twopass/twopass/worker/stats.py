"""Counters a worker reports in its heartbeat and on exit, updated from many threads at once."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class WorkerStats:
    """Running totals; every update takes the lock (``+=`` on an attribute is not atomic across threads)."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0
    #: Jobs never run because their deadline had passed (ended ``expired``).
    expired: int = 0
    #: Cancelled jobs whose message was deleted without running them.
    cancelled: int = 0
    #: Results thrown away because the job was cancelled while it ran.
    discarded: int = 0
    batches: int = 0
    #: Jobs that went through the model, over all batches (their mean size is ``batched_jobs / batches``).
    batched_jobs: int = 0
    largest_batch: int = 0
    inference_seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(
        self,
        *,
        received: int = 0,
        succeeded: int = 0,
        failed: int = 0,
        duplicates: int = 0,
        retried: int = 0,
        expired: int = 0,
        cancelled: int = 0,
        discarded: int = 0,
    ) -> None:
        with self._lock:
            self.received += received
            self.succeeded += succeeded
            self.failed += failed
            self.duplicates += duplicates
            self.retried += retried
            self.expired += expired
            self.cancelled += cancelled
            self.discarded += discarded

    def add_batch(self, size: int, seconds: float) -> None:
        """One ``session.run`` of ``size`` jobs that took ``seconds``."""
        with self._lock:
            self.batches += 1
            self.batched_jobs += size
            self.largest_batch = max(self.largest_batch, size)
            self.inference_seconds += seconds

    def summary(self) -> dict[str, Any]:
        """A consistent snapshot (the heartbeat's and the exit log's figures)."""
        with self._lock:
            return {
                "received": self.received,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "duplicates": self.duplicates,
                "retried": self.retried,
                "expired": self.expired,
                "cancelled": self.cancelled,
                "discarded": self.discarded,
                "batches": self.batches,
                "mean_batch_size": round(self.batched_jobs / self.batches, 2) if self.batches else 0.0,
                "largest_batch": self.largest_batch,
                "inference_seconds": round(self.inference_seconds, 3),
            }
