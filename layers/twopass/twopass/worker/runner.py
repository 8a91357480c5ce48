"""The batching worker pipeline.

receivers (threads, long polling) ──▶ decode pool (threads) ──▶ pending ──▶ batcher ──▶ model thread ──▶ finisher
                                                          (mark running) ─┘    (session.run)   (store writes, ack)

* A batch closes when it holds ``max_batch_size`` jobs or ``max_wait_ms`` after its first job
  arrived, so a lone job is never held back waiting for company; and at once when the model is
  idle and the last receive found the queue drained, since then nobody is coming to wait for.
* Images are decoded while the previous batch is on the model: onnxruntime and Pillow both
  release the GIL, so threads overlap for real.
* The model never waits for the network: while one batch is on the model the next one is formed
  and marked running, and the previous one's results are written and acked on another thread.
  One batch runs and one waits ready at most; finished batches queue for the finisher, bounded.
* A message is acknowledged only after its job's final state is durable; anything that fails in
  between is simply redelivered, and the store's conditional transitions make redelivery harmless.
* Messages held longer than half their visibility are extended, so a long batch is never handed
  to a second worker while the first is still on it.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from twopass.config import Settings
from twopass.exceptions import DependencyError, InvalidImageError
from twopass.jobs.base import JobStatus, JobStore
from twopass.models.runtime import Classifier, Prediction
from twopass.queue.base import Delivery, MessageSource
from twopass.worker.events import WorkerEvents

logger = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """Counters a worker reports in its heartbeat and on exit."""

    received: int = 0
    succeeded: int = 0
    failed: int = 0
    duplicates: int = 0
    retried: int = 0
    batches: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    inference_seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        sizes = data.pop("batch_sizes")
        data["mean_batch_size"] = round(sum(sizes) / len(sizes), 2) if sizes else 0.0
        data["inference_seconds"] = round(self.inference_seconds, 3)
        return data


@dataclass
class _Item:
    delivery: Delivery
    tensor: Future[np.ndarray]


def _retry[T](fn: Callable[[], T], *, attempts: int = 4, base_delay: float = 0.2, stop: threading.Event) -> T:
    """Call ``fn`` again with exponential backoff while the dependency is down."""
    for attempt in range(attempts):
        try:
            return fn()
        except DependencyError:
            if attempt == attempts - 1 or stop.wait(base_delay * (2**attempt)):
                raise
    raise AssertionError("unreachable")


class Worker:
    """Consumes job messages from a :class:`MessageSource` and runs the slow model on them."""

    def __init__(
        self,
        classifier: Classifier,
        source: MessageSource,
        store: JobStore,
        settings: Settings | None = None,
        *,
        worker_id: str | None = None,
        sweeper: Callable[[], int] | None = None,
        events: WorkerEvents | None = None,
    ) -> None:
        self.classifier = classifier
        self.source = source
        self.store = store
        self.settings = settings or Settings.from_env()
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        #: Called every ``dlq_sweep_seconds``: marks dead-lettered jobs failed (see ops.deadletter).
        self.sweeper = sweeper
        self.events = events or WorkerEvents()
        self._stopping = threading.Event()
        self._pending: queue.Queue[_Item] = queue.Queue(maxsize=max(2 * self.settings.max_batch_size, 20))
        self._held: dict[str, Delivery] = {}
        self._held_lock = threading.Lock()
        self._decode_pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        self._io_pool = ThreadPoolExecutor(16, thread_name_prefix="store")
        # One batch on the model and one ready behind it; a few finished ones waiting to be written.
        self._model = ThreadPoolExecutor(1, thread_name_prefix="model")
        self._model_slots = threading.BoundedSemaphore(2)
        self._finisher = ThreadPoolExecutor(1, thread_name_prefix="finish")
        self._finish_slots = threading.BoundedSemaphore(4)
        #: Batches handed to the model thread and not finished; and whether the last receive came
        #: back short (the queue had nothing more), both read by the batcher.
        self._in_model = 0
        self._in_model_lock = threading.Lock()
        self._drained = True
        self._receivers: list[threading.Thread] = []
        self._background: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop receiving; the batch in flight finishes, jobs not yet started are released."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> WorkerStats:
        """Process jobs until :meth:`stop` is called; returns the counters."""
        logger.info(
            "worker %s: model %s on %s, batch ≤ %d, wait ≤ %d ms, %d receiver(s)",
            self.worker_id, self.classifier.name, self.classifier.providers[0],
            self.settings.max_batch_size, self.settings.max_wait_ms, self.settings.receivers,
        )  # fmt: skip
        self._start_threads()
        try:
            while not self.stopping:
                batch = self._next_batch()
                if batch:
                    self._process(batch)
        finally:
            self._shutdown()
        return self.stats

    def _start_threads(self) -> None:
        for i in range(max(1, self.settings.receivers)):
            t = threading.Thread(target=self._receive_loop, name=f"receiver-{i}", daemon=True)
            t.start()
            self._receivers.append(t)
        loops = [(self._heartbeat_loop, "heartbeat"), (self._lease_loop, "lease")]
        if self.sweeper is not None and self.settings.dlq_sweep_seconds > 0:
            loops.append((self._sweep_loop, "dlq-sweep"))
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._background.append(t)

    def _shutdown(self) -> None:
        self._stopping.set()
        # Receivers may be inside a long poll; whatever they get after stop is released by them.
        for t in self._receivers:
            t.join(timeout=self.settings.poll_wait_seconds + 5)
        leftovers = []
        while True:
            try:
                leftovers.append(self._pending.get_nowait().delivery)
            except queue.Empty:
                break
        if leftovers:
            self._release(leftovers)
        # Batches already marked running are finished: run, recorded, acked.
        self._model.shutdown(wait=True)
        self._finisher.shutdown(wait=True)
        for t in self._background:
            t.join(timeout=2)
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        self._io_pool.shutdown(wait=True)
        self.events.close()
        try:
            self.store.forget_worker(self.worker_id)
        except DependencyError:
            logger.warning("could not remove heartbeat of %s", self.worker_id)
        logger.info("worker %s stopped: %s", self.worker_id, self.stats.summary())

    # -- receiving ---------------------------------------------------------------------------

    def _receive_loop(self) -> None:
        backoff = 0.5
        while not self.stopping:
            try:
                deliveries = self.source.receive(10, self.settings.poll_wait_seconds)
                backoff = 0.5
            except Exception as exc:  # noqa: BLE001 - network, throttling, credentials: keep trying, slower
                logger.warning("receive failed (%s); retrying in %.1fs", exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 20.0)
                continue
            if not deliveries:
                self._drained = True
                continue
            self._drained = False  # more is on its way into pending
            self.stats.received += len(deliveries)
            self._hold(deliveries)
            if self.stopping:
                self._release(deliveries)
                break
            for delivery in deliveries:
                item = _Item(delivery, self._decode_pool.submit(self._decode, delivery))
                while True:  # bounded hand-off: a full pipeline slows receiving down
                    try:
                        self._pending.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        if self.stopping:
                            self._release([delivery])
                            break
            # Set after the hand-off, so the batcher never sees "drained" with these still in hand.
            self._drained = len(deliveries) < 10

    def _decode(self, delivery: Delivery) -> np.ndarray:
        if delivery.message is None:
            raise InvalidImageError(delivery.error or "undecodable message")
        return self.classifier.tensor(delivery.message.image_bytes(), max_pixels=self.settings.max_image_pixels)

    # -- batching ----------------------------------------------------------------------------

    def _next_batch(self) -> list[_Item]:
        try:
            first = self._pending.get(timeout=0.1)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.settings.max_wait_ms / 1000.0
        while len(batch) < self.settings.max_batch_size:
            try:
                batch.append(self._pending.get_nowait())
                continue
            except queue.Empty:
                pass
            if self._drained and self._model_idle():
                break  # the queue is empty and the model free: waiting would only add latency
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # Short waits, re-checking: a receiver may find the queue drained, the model free up.
                batch.append(self._pending.get(timeout=min(remaining, 0.002)))
            except queue.Empty:
                continue
        return batch

    def _model_idle(self) -> bool:
        with self._in_model_lock:
            return self._in_model == 0

    def _model_done(self, _: object) -> None:
        with self._in_model_lock:
            self._in_model -= 1
        self._model_slots.release()

    def _process(self, batch: list[_Item]) -> None:
        done: list[Delivery] = []
        ready: list[tuple[Delivery, np.ndarray]] = []
        for item in batch:
            delivery = item.delivery
            try:
                ready.append((delivery, item.tensor.result()))
            except DependencyError as exc:
                # The payload bucket is down: not the job's fault, so it comes back later.
                logger.warning("job %s: payload unavailable (%s); will be redelivered", delivery.message_id, exc)
                self.stats.retried += 1
                self._unhold([delivery])
            except Exception as exc:  # noqa: BLE001 - InvalidImageError, or anything Pillow throws on hostile bytes
                if delivery.message is None:
                    # Not a twopass message at all: leave it to be dead-lettered for inspection.
                    logger.error("message %s is not a job message: %s", delivery.message_id, exc)
                    self._unhold([delivery])
                elif self._finish_failed(delivery, f"invalid image: {exc}"):
                    done.append(delivery)
        started = self._start_jobs(ready)
        for delivery, _ in ready:
            if delivery.message_id in started.duplicates:
                done.append(delivery)
        runnable = [(d, t) for d, t in ready if d.message_id in started.running]
        if done:
            self._ack(done)
        if not runnable:
            self.events.flush()
            return
        self._model_slots.acquire()  # waits while one batch runs and another is ready
        with self._in_model_lock:
            self._in_model += 1
        future = self._model.submit(self._guarded, self._infer_batch, runnable)
        future.add_done_callback(self._model_done)

    def _guarded(self, fn: Callable[[list[tuple[Delivery, Any]]], None], items: list[tuple[Delivery, Any]]) -> None:
        """Run a pipeline stage; on a bug, log it and let the messages come back after their visibility."""
        try:
            fn(items)
        except Exception:
            logger.exception("%s failed for a batch of %d; its messages will be redelivered", fn.__name__, len(items))
            self._unhold([d for d, _ in items])

    @dataclass
    class _Started:
        running: set[str]
        duplicates: set[str]

    def _start_jobs(self, ready: Sequence[tuple[Delivery, np.ndarray]]) -> Worker._Started:
        started = Worker._Started(set(), set())

        def start(delivery: Delivery) -> None:
            assert delivery.message is not None
            job_id = delivery.message.job_id
            try:
                record = _retry(lambda: self.store.start(job_id, self.worker_id), stop=self._stopping)
            except DependencyError as exc:
                logger.warning("job %s: could not mark running (%s); will be redelivered", job_id, exc)
                self.stats.retried += 1
                self._unhold([delivery])
                return
            if record is None:
                # Final already (a duplicate delivery) or unknown/expired: nothing to do.
                self.stats.duplicates += 1
                started.duplicates.add(delivery.message_id)
            else:
                started.running.add(delivery.message_id)

        list(self._io_pool.map(start, [d for d, _ in ready]))
        return started

    def _infer_batch(self, runnable: list[tuple[Delivery, np.ndarray]]) -> None:
        """Model thread: one ``session.run``, then the results go to the finisher."""
        t0 = time.perf_counter()
        try:
            predictions = self.classifier.predict_batch([t for _, t in runnable])
        except Exception as exc:
            logger.exception("inference failed for a batch of %d", len(runnable))
            done = []
            for delivery, _ in runnable:
                if self.source.last_attempt(delivery) and self._finish_failed(delivery, f"inference failed: {exc}"):
                    done.append(delivery)
                else:
                    self.stats.retried += 1
                    self._unhold([delivery])  # no longer extended: it comes back after its visibility
            if done:
                self._ack(done)
            self.events.flush()
            return
        elapsed = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(runnable))
        self.stats.inference_seconds += elapsed
        batch_ms = round(elapsed * 1000, 3)
        now = time.time()
        waits = [max(0.0, (now - d.message.submitted_at) * 1000 - batch_ms) for d, _ in runnable if d.message]
        self.events.batch(len(runnable), batch_ms, waits)
        items = [(d, (p, batch_ms)) for (d, _), p in zip(runnable, predictions, strict=True)]
        self._finish_slots.acquire()  # back-pressure when the table is slower than the model
        future = self._finisher.submit(self._guarded, self._record_batch, items)
        future.add_done_callback(lambda _: self._finish_slots.release())

    def _record_batch(self, items: list[tuple[Delivery, tuple[Prediction, float]]]) -> None:
        """Finisher thread: write every result (in parallel, conditional), then ack the batch at once."""
        size = len(items)

        def record(item: tuple[Delivery, tuple[Prediction, float]]) -> Delivery | None:
            delivery, (prediction, batch_ms) = item
            assert delivery.message is not None
            result = {
                "model": self.classifier.name,
                "label": prediction.label,
                "top_k": prediction.top_k(),
                "batch_size": size,
                "inference_ms": batch_ms,
                "queue_wait_ms": round(max(0.0, time.time() - delivery.message.submitted_at) * 1000 - batch_ms, 1),
            }
            try:
                wrote = _retry(lambda: self.store.succeed(delivery.message.job_id, result), stop=self._stopping)  # type: ignore[union-attr]
            except DependencyError as exc:
                logger.warning("job %s: result not recorded (%s); will be redelivered", delivery.message.job_id, exc)
                self.stats.retried += 1
                self._unhold([delivery])
                return None
            if wrote:
                self.stats.succeeded += 1
                self.events.final(delivery.message, JobStatus.SUCCEEDED, result, None)  # type: ignore[arg-type]
                if delivery.message.image_ref:  # type: ignore[union-attr]
                    self._drop_payload(delivery.message.image_ref)  # type: ignore[union-attr]
            else:
                self.stats.duplicates += 1
            return delivery

        done = [d for d in self._io_pool.map(record, items) if d is not None]
        if done:
            self._ack(done)
        self.events.flush()  # one EMF blob per batch

    @staticmethod
    def _drop_payload(ref: str) -> None:
        from twopass import payloads

        try:
            payloads.delete(ref)
        except DependencyError as exc:  # the bucket's lifecycle rule removes it later anyway
            logger.info("could not delete payload %s: %s", ref, exc)

    def _finish_failed(self, delivery: Delivery, reason: str) -> bool:
        """Record a permanent failure; ``True`` when the message may be deleted."""
        assert delivery.message is not None
        try:
            wrote = _retry(lambda: self.store.fail(delivery.message.job_id, reason), stop=self._stopping)  # type: ignore[union-attr]
        except DependencyError:
            self._unhold([delivery])
            return False
        if wrote:
            self.stats.failed += 1
            self.events.final(delivery.message, JobStatus.FAILED, None, reason)
        return True

    # -- acknowledgement and visibility ------------------------------------------------------

    def _hold(self, deliveries: Sequence[Delivery]) -> None:
        with self._held_lock:
            for d in deliveries:
                self._held[d.receipt] = d

    def _unhold(self, deliveries: Sequence[Delivery]) -> None:
        with self._held_lock:
            for d in deliveries:
                self._held.pop(d.receipt, None)

    def _ack(self, deliveries: Sequence[Delivery]) -> None:
        try:
            self.source.ack(deliveries)
        except Exception as exc:  # noqa: BLE001 - the results are durable; a redelivery is a harmless duplicate
            logger.warning("ack of %d message(s) failed: %s", len(deliveries), exc)
        self._unhold(deliveries)

    def _release(self, deliveries: Sequence[Delivery]) -> None:
        try:
            self.source.release(deliveries)
        except Exception as exc:  # noqa: BLE001 - best effort; logged, retried later
            logger.warning("could not release %d message(s) (%s); they reappear after visibility", len(deliveries), exc)
        self._unhold(deliveries)

    def _lease_loop(self) -> None:
        visibility = self.settings.visibility_timeout_seconds
        while not self._stopping.wait(1.0):
            now = time.monotonic()
            with self._held_lock:
                due = [d for d in self._held.values() if now - d.received_at > visibility / 2]
            if due:
                try:
                    self.source.extend(due, visibility)
                    for d in due:
                        d.received_at = now
                except Exception as exc:  # noqa: BLE001 - best effort; logged, retried later
                    logger.warning("could not extend visibility of %d message(s): %s", len(due), exc)

    def _sweep_loop(self) -> None:
        assert self.sweeper is not None
        while not self._stopping.wait(self.settings.dlq_sweep_seconds):
            try:
                if marked := self.sweeper():
                    self.events.dead_lettered(marked)
            except Exception as exc:  # noqa: BLE001 - best effort; the next sweep tries again
                logger.warning("dead-letter sweep failed: %s", exc)

    def _heartbeat_loop(self) -> None:
        info = {"host": socket.gethostname(), "pid": os.getpid(), "model": self.classifier.name,
                "provider": self.classifier.providers[0], "model_card": self.classifier.card.to_dict()}  # fmt: skip
        while True:
            try:
                self.store.beat(self.worker_id, {**info, **self.stats.summary()})
            except Exception as exc:  # noqa: BLE001 - best effort; logged, retried later
                logger.warning("heartbeat failed: %s", exc)
            if self._stopping.wait(self.settings.heartbeat_seconds):
                return
