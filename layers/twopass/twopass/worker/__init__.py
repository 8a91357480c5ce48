"""The slow-model worker: receive, batch, infer, record, acknowledge."""

from twopass.worker.runner import Worker
from twopass.worker.stats import WorkerStats

__all__ = ["Worker", "WorkerStats"]
