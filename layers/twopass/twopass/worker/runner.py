"""The slow-model worker, assembled from its parts.

receivers (intake) ──▶ decode pool ──▶ pending ──▶ batcher ──▶ model thread ──▶ finisher
                                     (mark running: recorder) ─┘  (pipeline)    (store writes, ack)

* :mod:`~twopass.worker.intake`: long-polling receivers, decoding while the previous batch is on the
  model (onnxruntime and Pillow both release the GIL, so the threads overlap for real).
* :mod:`~twopass.worker.pipeline`: batches, the model thread and the finisher.
* :mod:`~twopass.worker.recorder`: the job's transitions in the store, then the acknowledgement.
* :mod:`~twopass.worker.leases`: which messages are held, extended, acked or released.
* :mod:`~twopass.worker.background`: the heartbeat and the dead-letter sweep.

Shutdown (:meth:`Worker.stop`, SIGTERM): receiving stops at once without waiting out a long poll;
messages received but not started are released; batches already marked running are finished.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from functools import partial

import numpy as np

from twopass.config import Settings
from twopass.exceptions import DependencyError
from twopass.jobs.base import JobStore
from twopass.jobs.cache import ResultCache, cache_for
from twopass.models.runtime import Classifier
from twopass.observability.metrics import Metric, MetricsSink
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, MessageSource
from twopass.worker import background
from twopass.worker.caching import CacheFiller
from twopass.worker.chores.reconcile import Reconciler
from twopass.worker.events import WorkerEvents
from twopass.worker.intake import Intake
from twopass.worker.leases import Leases
from twopass.worker.pipeline import Pipeline
from twopass.worker.recorder import Recorder
from twopass.worker.rollout import SlowModels
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: Longest the shutdown waits for a heartbeat write in flight before removing the heartbeat.
_HEARTBEAT_JOIN_SECONDS = 2.0
#: How often the serving provider is reported as a metric (the "GPU task serving on CPU" alarm's input).
_PROVIDER_METRIC_SECONDS = 60.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Worker:
    """Consumes job messages from a :class:`MessageSource` and runs the slow model on them."""

    def __init__(
        self,
        classifier: Classifier,
        source: MessageSource,
        store: JobStore,
        settings: Settings,
        *,
        worker_id: str | None = None,
        sweeper: Callable[[], int] | None = None,
        events: WorkerEvents | None = None,
        payloads: PayloadStore | None = None,
        reconciler: Reconciler | None = None,
        models: SlowModels | None = None,
        cache: ResultCache | None = None,
    ) -> None:
        self.classifier = classifier
        self.source = source
        self.store = store
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        #: Called every ``dlq_sweep_seconds``: marks dead-lettered jobs failed (see ops.deadletter).
        self.sweeper = sweeper
        #: Run every ``reconcile_seconds``: republishes or fails jobs whose message was lost.
        self.reconciler = reconciler
        self.events = events or WorkerEvents()
        self.payloads = payloads or PayloadStore()
        self.stats = WorkerStats()
        self._stop = threading.Event()
        self.leases = Leases(source, settings.visibility_timeout_seconds)
        #: The serving model and, while a rollout runs, the candidate (both loaded once, here).
        self.models = models or SlowModels.from_settings(settings, classifier, image=self.payloads.image)
        if cache is None and settings.result_cache:
            cache = cache_for(store, settings.result_cache_ttl_hours * 3600)
        filler = None if cache is None else CacheFiller(cache, classifier.card.version)
        self.recorder = Recorder(
            store, self.leases, self.payloads, self.events, self.stats, worker_id=self.worker_id, stop=self._stop,
            cache=filler,
        )  # fmt: skip
        self.intake = Intake(source, self.leases, self.stats, settings, decode=self._decode, stop=self._stop)
        self.pipeline = Pipeline(
            classifier, self.intake, self.recorder, self.leases, self.events, self.stats, settings, self._stop,
            self.models,
        )  # fmt: skip
        self._chores: list[threading.Thread] = []

    def stop(self) -> None:
        """Stop receiving; the batch in flight finishes, jobs not yet started are released."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> WorkerStats:
        """Process jobs until :meth:`stop` is called; returns the counters."""
        logger.info(
            "worker %s: model %s on %s, batch ≤ %d, wait ≤ %d ms, %d receiver(s)",
            self.worker_id, self.classifier.name, self.classifier.providers[0],
            self.settings.max_batch_size, self.settings.max_wait_ms, self.settings.receivers,
        )  # fmt: skip
        self.intake.start()
        self._start_chores()
        try:
            while not self.stopping:
                self.pipeline.step()
        finally:
            self._shutdown()
        return self.stats

    def _decode(self, message: JobMessage) -> np.ndarray:
        return self.classifier.tensor(self.payloads.image(message), max_pixels=self.settings.max_image_pixels)

    def _start_chores(self) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "model": self.classifier.name,
                "provider": self.classifier.providers[0], "provider_requested": self.classifier.requested_provider,
                "model_card": self.classifier.card.to_dict()}  # fmt: skip
        if self.models.candidate is not None:  # operators see a rollout in /health/all's worker figures
            info.update(rollout=str(self.models.rollout), candidate_version=self.models.candidate.card.version)
        s, stop = self.settings, self._stop
        self._spawn(
            "heartbeat",
            partial(background.heartbeat, self.store, self.worker_id, info, self.stats, s.heartbeat_seconds, stop),
        )
        self._spawn("lease", partial(self.leases.keep_alive, stop))
        metrics = getattr(self.events, "metrics", None)
        if isinstance(metrics, MetricsSink):
            self._spawn("provider", partial(self._report_provider, metrics, _PROVIDER_METRIC_SECONDS))
        if self.sweeper is not None and s.dlq_sweep_seconds > 0:
            self._spawn(
                "dlq-sweep",
                partial(background.sweep_dead_letters, self.sweeper, self.events, s.dlq_sweep_seconds, stop),
            )
        if self.reconciler is not None and s.reconcile_seconds > 0:
            self._spawn("reconcile", partial(background.reconcile_orphans, self.reconciler, s.reconcile_seconds, stop))

    def _report_provider(self, metrics: MetricsSink, every: float) -> None:
        """What the model serves on, as a metric dimension, beside what was asked (until stopped)."""
        dimensions = {"provider": self.classifier.providers[0], "requested": self.classifier.requested_provider}
        while True:
            try:
                metrics.add_dimensioned(Metric.SERVING_PROVIDER, 1, dimensions)
            except Exception as exc:  # noqa: BLE001 - best effort; the next report tries again
                logger.warning("provider metric failed: %s", exc)
            if self._stop.wait(every):
                return

    def _spawn(self, name: str, body: Callable[[], None]) -> None:
        thread = threading.Thread(target=body, name=name, daemon=True)
        thread.start()
        self._chores.append(thread)

    def _shutdown(self) -> None:
        self._stop.set()
        self.leases.release(self.intake.close())
        self.pipeline.close()
        for thread in self._chores:
            # The heartbeat must not write again after it is removed below; a sweep in progress is
            # idempotent and may simply be cut off when the process exits.
            if thread.name not in ("dlq-sweep", "reconcile"):
                thread.join(timeout=_HEARTBEAT_JOIN_SECONDS)
        self.recorder.close()
        self.leases.flush()  # the deletes still waiting to share a call
        self.events.close()
        try:
            self.store.forget_worker(self.worker_id)
        except DependencyError:
            logger.warning("could not remove heartbeat of %s", self.worker_id)
        logger.info("worker %s stopped: %s", self.worker_id, self.stats.summary())
