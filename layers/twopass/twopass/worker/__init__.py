"""The slow-model worker: receive, batch, infer, record, acknowledge."""

from twopass.worker.runner import Worker, WorkerStats

__all__ = ["Worker", "WorkerStats"]
