"""What ``GET /health`` and the model card report: per-backend health, the queues' backlog, the slow card.

Every key may call ``/health/all``, so it says how the service is, never where it runs: a worker is
reported by an opaque id with its model, version and provider; its host, process id and the
workload figures of its heartbeat (the jobs of every tenant) stay in the table for operators.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twopass.api.services.intake import JobIntake
from twopass.exceptions import DependencyError, ModelLoadError
from twopass.jobs.base import WorkerBeat
from twopass.models.card import ModelCard, card_path
from twopass.models.runtime import Classifier


class HealthReport:
    """Checks each backend the API depends on; ``classifier`` loads the fast model (or raises)."""

    def __init__(self, intake: JobIntake, classifier: Callable[[], Classifier]) -> None:
        self.intake = intake
        self.settings = intake.settings
        self.store = intake.store
        self._classifier = classifier

    def backlog(self) -> int:
        """Jobs waiting or in flight in the queues (SQS's approximate counts, summed over both queues)."""
        total = 0
        for publisher in filter(None, (self.intake.publisher, self.intake.high_priority_publisher)):
            depth = publisher.ping()
            total += int(depth.get("visible", 0)) + int(depth.get("in_flight", 0))
        return total

    def slow_card(self) -> dict[str, Any] | None:
        """The slow model's card: from the file if this host has it, else from a live worker."""
        path = card_path(Path(self.settings.slow_model))
        if path.is_file():
            return ModelCard.load(path).to_dict()
        try:
            for beat in self.store.workers():
                card = beat.info.get("model_card")
                if isinstance(card, dict):
                    return card
        except DependencyError:
            pass
        return None

    def health(self) -> dict[str, dict[str, Any]]:
        """Per-backend health: fast model, queue, table, workers."""
        return {
            "fast_model": self._fast_model(),
            "queue": _check(lambda: self.intake.publisher.ping()),
            "table": _check(self._table),
            "worker": self._workers(),
        }

    def _table(self) -> dict[str, Any]:
        self.store.ping()
        return {}

    def _fast_model(self) -> dict[str, Any]:
        try:
            classifier = self._classifier()
            return {"status": "ok", "model": classifier.name, "provider": classifier.providers[0]}
        except ModelLoadError as exc:
            return {"status": "error", "detail": str(exc)}

    def _workers(self) -> dict[str, Any]:
        try:
            beats = self.store.workers()
        except DependencyError as exc:
            return {"status": "unknown", "detail": str(exc)}
        now = time.time()
        alive = [b for b in beats if b.age(now) <= self.settings.worker_stale_seconds]
        workers = [_worker_summary(b, now) for b in alive]
        info: dict[str, Any] = {
            "alive": len(alive),
            "last_heartbeat_age_s": round(beats[0].age(now), 3) if beats else None,
            "workers": workers,
        }
        off = [w for w in workers if w.get("provider_requested") not in (None, w.get("provider"))]
        if off:
            # Serving, but not where asked (a GPU task on the CPU, with fallback allowed): slower and
            # dearer than planned, so the service is degraded, not down.
            detail = f"{len(off)} of {len(workers)} worker(s) serve on a provider other than the one asked for"
            return {"status": "degraded", "detail": detail, **info}
        # No live worker is normal when the service has scaled to zero: jobs wait in the queue.
        return {"status": "ok" if alive else "idle", **info}


def _check(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``ok`` with what the probe reports, or ``error`` with why it failed."""
    try:
        return {"status": "ok", **probe()}
    except DependencyError as exc:
        return {"status": "error", "detail": str(exc)}


#: Heartbeat fields any caller may see; everything else in a heartbeat is the operators' (host, pid, counts).
_PUBLIC_WORKER_FIELDS = ("model", "provider", "provider_requested", "rollout", "candidate_version")


def worker_ref(worker_id: str) -> str:
    """An opaque, stable reference to a worker: its id names the host and the process."""
    return hashlib.sha256(worker_id.encode()).hexdigest()[:12]


def _worker_summary(beat: WorkerBeat, now: float) -> dict[str, Any]:
    info = {k: beat.info[k] for k in _PUBLIC_WORKER_FIELDS if k in beat.info}
    card = beat.info.get("model_card")
    if isinstance(card, dict):
        info["model_version"], info["model_sha256"] = card.get("version"), card.get("sha256")
    return {"id": worker_ref(beat.worker_id), "age_s": round(beat.age(now), 3), **info}
