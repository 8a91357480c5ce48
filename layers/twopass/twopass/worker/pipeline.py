"""Batching and the model: pending jobs → batch → ``session.run`` → results to the recorder.

* A batch closes when it holds ``max_batch_size`` jobs or ``max_wait_ms`` after its first job
  arrived, so a lone job is never held back waiting for company; and at once when the model is
  idle and the last receive found the queue drained, since then nobody is coming to wait for.
* The model never waits for the network: while one batch is on the model the next one is formed
  and marked running, and the previous one's results are written and acked on another thread.
  One batch runs and one waits ready at most; finished batches queue for the finisher, bounded.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from twopass.config import Settings
from twopass.exceptions import DependencyError
from twopass.models.runtime import Classifier
from twopass.queue.base import Delivery
from twopass.worker.events import WorkerEvents
from twopass.worker.intake import Intake, Item
from twopass.worker.leases import Leases
from twopass.worker.recorder import Recorder
from twopass.worker.rollout import SlowModels
from twopass.worker.stats import WorkerStats

logger = logging.getLogger(__name__)

#: Batches on the model or ready behind it, and finished batches waiting to be written.
MODEL_SLOTS = 2
#: The batch behind the one on the model is formed this long before that one is expected to end, not
#: as soon as it starts: time enough to take, check and start it (its images were decoded ahead, in
#: the intake), late enough that a high-priority job arriving meanwhile makes this batch rather than
#: the one after it.
FORM_LEAD_SECONDS = 0.1
FINISH_SLOTS = 4
#: How often waits re-check for a shutdown or a change of state.
_TICK = 0.1
_BATCH_TICK = 0.002


class Slots:
    """A counting semaphore whose waits give up on shutdown and whose emptiness can be read."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, stop: threading.Event) -> bool:
        """Take a slot when one frees up; ``False`` (nothing taken) once ``stop`` is set."""
        with self._cond:
            while not stop.is_set():
                if self._used < self._size:
                    self._used += 1
                    return True
                self._cond.wait(_TICK)
            return False

    def release(self) -> None:
        with self._cond:
            self._used -= 1
            self._cond.notify()

    def idle(self) -> bool:
        with self._cond:
            return self._used == 0

    def wait_free(self, timeout: float) -> bool:
        """Whether a slot is free, waiting up to ``timeout`` for one (nothing is taken)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._used < self._size, timeout)


class Pipeline:
    """Forms batches from the intake and runs them on the model thread; results go to the finisher."""

    def __init__(
        self,
        classifier: Classifier,
        intake: Intake,
        recorder: Recorder,
        leases: Leases,
        events: WorkerEvents,
        stats: WorkerStats,
        settings: Settings,
        stop: threading.Event,
        models: SlowModels | None = None,
    ) -> None:
        self.classifier = classifier
        #: The serving model and a rollout's candidate (``twopass.worker.rollout``).
        self.models = models or SlowModels(classifier)
        self.intake = intake
        self.recorder = recorder
        self.leases = leases
        self.events = events
        self.stats = stats
        self.max_batch_size = settings.max_batch_size
        self.max_wait = settings.max_wait_ms / 1000.0
        self._stop = stop
        self._model = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._model_slots = Slots(MODEL_SLOTS)
        #: When the model is expected to be done with every batch given to it (``time.monotonic()``), and
        #: the expected seconds of those still waiting behind the one on it, in order.
        self._model_free_at = 0.0
        self._model_queue: collections.deque[float] = collections.deque()
        self._timing = threading.Lock()
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._finish_slots = threading.BoundedSemaphore(FINISH_SLOTS)

    def step(self) -> None:
        """Form the next batch (if anything is pending) and start it."""
        self._await_turn()
        batch = self.next_batch()
        if batch:
            self.process(batch)

    def _await_turn(self) -> None:
        """While the model is busy, wait until what it has is about to end: the next batch is formed
        then, with the most urgent work there is by that time."""
        while not self._stop.is_set():
            if not self._model_slots.wait_free(_TICK):
                continue
            with self._timing:
                left = self._model_free_at - time.monotonic()
            if left <= FORM_LEAD_SECONDS or self._model_slots.idle():
                return
            self._stop.wait(min(left - FORM_LEAD_SECONDS, _TICK))

    def _expected_seconds(self, size: int) -> float:
        """How long a batch of ``size`` should take on the model, from this worker's own record."""
        jobs, seconds = self.stats.batched_jobs, self.stats.inference_seconds
        return size * seconds / jobs if jobs else 0.0

    def close(self) -> None:
        """Finish the batches already started: run, recorded, acked."""
        self._model.shutdown(wait=True)
        self._finisher.shutdown(wait=True)

    # -- batching ------------------------------------------------------------------------------

    def next_batch(self) -> list[Item]:
        """Jobs for one batch, taken by priority (high-priority first, normal work's share kept)."""
        first = self.intake.pending.take(timeout=_TICK)
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch_size:
            item = self.intake.pending.take()
            if item is not None:
                batch.append(item)
                continue
            if self.intake.drained and self._model_slots.idle():
                break  # the queue is empty and the model free: waiting would only add latency
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # Short waits, re-checking: a receiver may find the queue drained, the model free up.
            item = self.intake.pending.take(timeout=min(remaining, _BATCH_TICK))
            if item is not None:
                batch.append(item)
        return batch

    def process(self, batch: list[Item]) -> None:
        """Fail undecodable images, mark the rest running and hand them to the model thread."""
        # A job past its deadline is never run: expired (and acked) before it costs a model slot.
        start, done = self.recorder.control.expire_late([item.delivery for item in batch])
        if done:
            keep = {d.key for d in start}
            batch = [item for item in batch if item.delivery.key in keep]
        ready, failed = self._tensors(batch)
        done += failed
        if not ready:
            self.leases.ack(done)
            self.events.flush()
            return
        if not self._model_slots.acquire(self._stop):
            # Shutting down: nothing of this batch was started, so it goes straight back.
            self.leases.release([d for d, _ in ready])
            self.leases.ack(done)
            return
        running, final = self.recorder.start([d for d, _ in ready])
        self.leases.ack(done + final)
        started = {d.key for d in running}
        runnable = [(d, t) for d, t in ready if d.key in started]
        if not runnable:
            self._model_slots.release()
            self.events.flush()
            return
        expected = self._expected_seconds(len(runnable))
        with self._timing:
            self._model_queue.append(expected)
            self._model_free_at = max(time.monotonic(), self._model_free_at) + expected
        future = self._model.submit(self._guarded, self._infer, runnable)
        future.add_done_callback(lambda _: self._model_slots.release())

    def _tensors(self, batch: list[Item]) -> tuple[list[tuple[Delivery, np.ndarray]], list[Delivery]]:
        """``(decoded, failed for good)``: a bad image fails its job; a payload outage retries it later."""
        ready: list[tuple[Delivery, np.ndarray]] = []
        done: list[Delivery] = []
        for item in batch:
            try:
                ready.append((item.delivery, item.tensor.result()))
            except DependencyError as exc:
                self.recorder.retry_later(item.delivery, f"payload unavailable ({exc})")
            except Exception as exc:  # noqa: BLE001 - InvalidImageError, a missing payload, anything Pillow throws
                if self.recorder.fail(item.delivery, f"invalid image: {exc}"):
                    done.append(item.delivery)
        return ready, done

    def _guarded[T](self, stage: Callable[[list[tuple[Delivery, T]]], None], items: list[tuple[Delivery, T]]) -> None:
        """Run a stage off the main thread; on a bug, log it and let the messages come back after their visibility."""
        try:
            stage(items)
        except Exception:
            logger.exception(
                "%s failed for a batch of %d; its messages will be redelivered", stage.__name__, len(items)
            )
            self.leases.drop([d for d, _ in items])

    # -- the model thread ----------------------------------------------------------------------

    def _infer(self, runnable: list[tuple[Delivery, np.ndarray]]) -> None:
        """One ``session.run`` (two while a candidate serves or shadows part of it), then the results go to
        the finisher."""
        deliveries, size = [d for d, _ in runnable], len(runnable)
        messages = [d.message for d in deliveries]
        with self._timing:  # this batch is on the model now: when all will be done, counted from now
            own = self._model_queue.popleft() if self._model_queue else 0.0
            self._model_free_at = time.monotonic() + own + sum(self._model_queue)
        started = time.perf_counter()
        try:
            answers = self.models.predict(messages, [t for _, t in runnable])
        except Exception as exc:
            logger.exception("inference failed for a batch of %d", size)
            self.recorder.inference_failed(deliveries, f"inference failed: {exc}")
            return
        elapsed = time.perf_counter() - started
        self.stats.add_batch(size, elapsed)
        batch_ms, now = elapsed * 1000, time.time()
        results = []
        for d, a in zip(deliveries, answers, strict=True):
            wait = _queue_wait_ms(d, now, batch_ms)
            base = a.prediction.result(a.model.name, batch_ms, batch_size=size, queue_wait_ms=wait)
            results.append((d, self.models.result(a, d.message, base)))
        self.events.batch(size, round(batch_ms, 3), [r["queue_wait_ms"] for _, r in results])
        self._finish_slots.acquire()  # back-pressure when the table is slower than the model
        future = self._finisher.submit(self._guarded, self.recorder.succeed_all, results)
        future.add_done_callback(lambda _: self._finish_slots.release())


def _queue_wait_ms(delivery: Delivery, now: float, batch_ms: float) -> float:
    """Submission → batch start: how long the job waited before the model took it."""
    return max(0.0, (now - delivery.message.submitted_at) * 1000 - batch_ms)
