"""Slow path: raw onnxruntime (the limit) vs the twopass worker vs a one-job-at-a-time loop."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import latency_summary, log, median, median_of_runs, photos, ratio

# Imported after bench.common set ORT_DISABLE_TELEMETRY and the fake AWS credentials.
from twopass.config import Settings
from twopass.imaging import load_tensor
from twopass.jobs.base import JobRecord, JobStore, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage, JobPublisher, MessageSource
from twopass.queue.memory import MemoryQueue
from twopass.worker.runner import Worker

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class SlowConfig:
    """What a slow-path run uses; ``bench/run.py`` fills it from the command line."""

    jobs: int = 200
    moto_jobs: int = 100
    repeats: int = 3
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    raw_images: int = 96
    lone_jobs: int = 50
    tune: bool = True
    tune_jobs: int = 96


class CountingStore(MemoryJobStore):
    """A memory store that signals when ``target`` results were recorded, and when each was."""

    def __init__(self) -> None:
        super().__init__()
        self.done_at: dict[str, float] = {}
        self.target = 0
        self.reached = threading.Event()
        self._count_lock = threading.Lock()

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        wrote = super().succeed(job_id, result)
        with self._count_lock:
            self.done_at[job_id] = time.perf_counter()
            if len(self.done_at) >= self.target:
                self.reached.set()
        return wrote


def slow_settings(**changes: Any) -> Settings:
    base = Settings().replace(
        providers=("CPUExecutionProvider",), poll_wait_seconds=1, heartbeat_seconds=3600.0, log_level="WARNING"
    )
    return base.replace(**changes)


def load_slow(settings: Settings) -> Classifier:
    return Classifier.from_location(
        settings.slow_model, providers=settings.providers, intra_op_threads=settings.intra_op_threads
    )


def corpus(n: int) -> list[bytes]:
    """``n`` real photos, cycling through the set."""
    return list(itertools.islice(itertools.cycle(photos()), n))


# -- raw onnxruntime ---------------------------------------------------------------------------


def raw_infer(classifier: Classifier, batch: int, images: int) -> float:
    """Images/s of ``session.run`` alone on preprocessed tensors at ``batch``."""
    tensors = [classifier.tensor(p, max_pixels=MAX_PIXELS) for p in photos()]
    x = np.stack(list(itertools.islice(itertools.cycle(tensors), batch)))
    session, feed = classifier.session, classifier.card.input_name
    session.run(None, {feed: x})  # this shape's first run allocates
    runs = max(2, -(-images // batch))
    t0 = time.perf_counter()
    for _ in range(runs):
        session.run(None, {feed: x})
    return runs * batch / (time.perf_counter() - t0)


def raw_pipeline(classifier: Classifier, data: Sequence[bytes], batch: int, decode_threads: int) -> float:
    """Images/s of the ideal hand-written pipeline: decode in a pool, batched ``session.run``."""
    spec = classifier.card.preprocessing
    session, feed = classifier.session, classifier.card.input_name
    t0 = time.perf_counter()
    with ThreadPoolExecutor(decode_threads) as pool:
        futures = [pool.submit(load_tensor, d, spec, max_pixels=MAX_PIXELS) for d in data]
        for i in range(0, len(futures), batch):
            x = np.stack([f.result() for f in futures[i : i + batch]])
            session.run(None, {feed: x})
    return len(data) / (time.perf_counter() - t0)


def raw_single(classifier: Classifier, data: Sequence[bytes]) -> list[float]:
    """Seconds per job of decode + batch-1 inference, one after the other (lone-job floor)."""
    out = []
    for d in data:
        t0 = time.perf_counter()
        classifier.predict(classifier.tensor(d, max_pixels=MAX_PIXELS))
        out.append(time.perf_counter() - t0)
    return out


# -- twopass worker -----------------------------------------------------------------------------


def preload(store: JobStore, publisher: JobPublisher, data: Sequence[bytes], threads: int = 1) -> list[str]:
    ids = [new_job_id() for _ in data]

    def put(pair: tuple[str, bytes]) -> None:
        store.create(JobRecord(job_id=pair[0]))
        publisher.publish(JobMessage(job_id=pair[0], image=pair[1]))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, zip(ids, data, strict=True)))
    return ids


def run_worker(
    classifier: Classifier,
    source: MessageSource,
    store: JobStore,
    reached: threading.Event,
    settings: Settings,
    timeout: float = 600,
) -> tuple[float, dict[str, Any]]:
    """Start a worker on a preloaded source; seconds until ``reached`` is set, and its stats."""
    worker = Worker(classifier, source, store, settings, worker_id="bench")
    thread = threading.Thread(target=worker.run, daemon=True)
    t0 = time.perf_counter()
    thread.start()
    if not reached.wait(timeout):
        worker.stop()
        raise TimeoutError("the worker did not finish the preloaded jobs")
    elapsed = time.perf_counter() - t0
    worker.stop()
    thread.join(timeout=30)
    return elapsed, worker.stats.summary()


def worker_memory(classifier: Classifier, data: Sequence[bytes], settings: Settings) -> tuple[float, dict[str, Any]]:
    """Images/s of the worker with MemoryQueue + MemoryJobStore, ``data`` preloaded."""
    queue, store = MemoryQueue(visibility=600), CountingStore()
    preload(store, queue, data)
    store.target = len(data)
    elapsed, stats = run_worker(classifier, queue, store, store.reached, settings)
    return len(data) / elapsed, stats


def one_at_a_time(classifier: Classifier, source: MessageSource, store: JobStore, n: int) -> float:
    """The seed backend's loop: receive 1, decode, infer batch 1, write, ack. Images/s."""
    done = 0
    t0 = time.perf_counter()
    while done < n:
        deliveries = source.receive(1, 1)
        for d in deliveries:
            assert d.message is not None
            prediction = classifier.predict(classifier.tensor(d.message.image, max_pixels=MAX_PIXELS))
            store.succeed(d.message.job_id, {"model": classifier.name, "label": prediction.label})
            source.ack([d])
            done += 1
    return n / (time.perf_counter() - t0)


def one_at_a_time_memory(classifier: Classifier, data: Sequence[bytes]) -> float:
    queue, store = MemoryQueue(visibility=600), MemoryJobStore()
    preload(store, queue, data)
    return one_at_a_time(classifier, queue, store, len(data))


def lone_job_latency(classifier: Classifier, data: Sequence[bytes], settings: Settings) -> list[float]:
    """Publish → result recorded, one job at a time into an idle worker (MemoryQueue)."""
    queue, store = MemoryQueue(visibility=600), CountingStore()
    store.target = 10**9
    worker = Worker(classifier, queue, store, settings, worker_id="bench-lone")
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    time.sleep(0.2)
    out = []
    try:
        for d in data:
            job_id = new_job_id()
            store.create(JobRecord(job_id=job_id))
            t0 = time.perf_counter()
            queue.publish(JobMessage(job_id=job_id, image=d))
            deadline = time.monotonic() + 30
            while job_id not in store.done_at:
                if time.monotonic() > deadline:
                    raise TimeoutError("lone job not recorded within 30 s")
                time.sleep(0.0005)
            out.append(store.done_at[job_id] - t0)
            time.sleep(0.05)  # idle again before the next one
    finally:
        worker.stop()
        thread.join(timeout=30)
    return out


# -- through the emulator -----------------------------------------------------------------------


def moto_measurements(classifier: Classifier, n: int, settings: Settings, repeats: int) -> dict[str, Any]:
    """Worker and one-at-a-time loop through a moto server (SqsSource + DynamoJobStore)."""
    from bench.common import moto_server, pointed_at, provision_moto
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.queue.sqs import SqsPublisher, SqsSource

    class CountingDynamo(DynamoJobStore):
        def __init__(self, table: str, target: int) -> None:
            super().__init__(table)
            self.count, self.target, self.reached = 0, target, threading.Event()
            self._lock = threading.Lock()

        def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
            wrote = super().succeed(job_id, result)
            with self._lock:
                self.count += 1
                if self.count >= self.target:
                    self.reached.set()
            return wrote

    out: dict[str, Any] = {}
    with moto_server() as endpoint:
        env = provision_moto(endpoint)
        with pointed_at(endpoint, env):
            queue_url, table = env["TWOPASS_QUEUE_URL"], env["TWOPASS_TABLE_NAME"]
            publisher, source = SqsPublisher(queue_url), SqsSource(queue_url, visibility_timeout=120)
            # The emulator's own ceiling: receive 10 + delete batch, no model, no store.
            preload(DynamoJobStore(table), publisher, corpus(n), threads=4)
            t0 = time.perf_counter()
            drained = 0
            while drained < n:
                got = source.receive(10, 1)
                if got:
                    source.ack(got)
                drained += len(got)
            out["emulator_drain_msgs_per_s"] = round(n / (time.perf_counter() - t0), 1)
            log(f"  moto drain (receive+delete, no model): {out['emulator_drain_msgs_per_s']} msg/s")
            worker_runs, loop_runs = [], []
            for _ in range(repeats):
                store = CountingDynamo(table, n)
                preload(store, publisher, corpus(n), threads=4)
                elapsed, stats = run_worker(classifier, source, store, store.reached, settings)
                worker_runs.append({"images_per_s": n / elapsed, "mean_batch_size": stats["mean_batch_size"]})
                log(f"  moto worker: {n / elapsed:.1f} img/s (mean batch {stats['mean_batch_size']})")
                m = max(20, n // 4)
                store = CountingDynamo(table, m)
                preload(store, publisher, corpus(m), threads=4)
                rate = one_at_a_time(classifier, source, store, m)
                loop_runs.append({"images_per_s": rate})
                log(f"  moto one-at-a-time: {rate:.1f} img/s")
            out["worker"] = median_of_runs(worker_runs)
            out["one_at_a_time"] = median_of_runs(loop_runs)
    return out


# -- the whole section --------------------------------------------------------------------------


def tune(data: Sequence[bytes], base: Settings) -> tuple[Settings, list[dict[str, Any]]]:
    """A small sweep of the worker's knobs on this machine; returns the best settings and the grid."""
    grid: list[dict[str, Any]] = []
    best: tuple[float, Settings] | None = None
    classifiers: dict[int, Classifier] = {}
    for intra, batch, decode in itertools.product((0, 1), (4, 8, 16), (1, 2)):
        if intra not in classifiers:
            classifiers[intra] = load_slow(base.replace(intra_op_threads=intra))
        settings = base.replace(intra_op_threads=intra, max_batch_size=batch, decode_threads=decode)
        rate, stats = worker_memory(classifiers[intra], data, settings)
        row = {
            "intra_op_threads": intra,
            "max_batch_size": batch,
            "decode_threads": decode,
            "images_per_s": round(rate, 2),
            "mean_batch_size": stats["mean_batch_size"],
        }
        grid.append(row)
        log(f"  tune {row}")
        if best is None or rate > best[0]:
            best = (rate, settings)
    assert best is not None
    return best[1], grid


def run(config: SlowConfig, progress: Callable[[str], None] = log) -> dict[str, Any]:
    result: dict[str, Any] = {"config": config.__dict__ | {"batch_sizes": list(config.batch_sizes)}}
    settings = slow_settings()
    if config.tune:
        progress("slow path: tuning worker settings")
        settings, grid = tune(corpus(config.tune_jobs), settings)
        result["tuning"] = grid
    chosen = {
        k: getattr(settings, k)
        for k in ("max_batch_size", "max_wait_ms", "decode_threads", "intra_op_threads", "receivers")
    }
    result["settings"] = chosen
    progress(f"slow path: settings {chosen}")
    classifier = load_slow(settings)

    progress("slow path: raw onnxruntime, batch sizes " + ", ".join(map(str, config.batch_sizes)))
    raw_runs: list[dict[str, float]] = []
    for _ in range(config.repeats):
        raw_runs.append({f"b{b}": raw_infer(classifier, b, config.raw_images) for b in config.batch_sizes})
        progress("  raw " + ", ".join(f"{k}={v:.1f}" for k, v in raw_runs[-1].items()) + " img/s")
    raw = median_of_runs(raw_runs)
    result["raw_infer_images_per_s"] = raw
    best_key = max((f"b{b}" for b in config.batch_sizes), key=lambda k: raw[k])
    result["raw_best_batch"] = int(best_key[1:])

    progress(f"slow path: {config.jobs} jobs — raw pipeline, worker (memory queue), one-at-a-time, interleaved")
    data = corpus(config.jobs)
    b = settings.max_batch_size
    runs: list[dict[str, float]] = []
    for _ in range(config.repeats):
        row: dict[str, float] = {}
        row["raw_infer_at_worker_batch"] = raw_infer(classifier, b, config.raw_images)
        row["raw_infer_best"] = raw_infer(classifier, result["raw_best_batch"], config.raw_images)
        row["raw_pipeline"] = raw_pipeline(classifier, data, b, settings.decode_threads)
        rate, stats = worker_memory(classifier, data, settings)
        row["worker_memory"] = rate
        row["worker_mean_batch"] = stats["mean_batch_size"]
        row["one_at_a_time_memory"] = one_at_a_time_memory(classifier, data[: max(40, len(data) // 2)])
        row["worker_vs_raw_infer_best"] = row["worker_memory"] / row["raw_infer_best"]
        row["worker_vs_raw_infer_same_batch"] = row["worker_memory"] / row["raw_infer_at_worker_batch"]
        row["worker_vs_raw_pipeline"] = row["worker_memory"] / row["raw_pipeline"]
        row["worker_vs_one_at_a_time"] = row["worker_memory"] / row["one_at_a_time_memory"]
        runs.append(row)
        progress("  " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()))
    result["memory"] = median_of_runs(runs)

    progress(f"slow path: lone-job latency over {config.lone_jobs} jobs")
    lone_data = corpus(config.lone_jobs)
    single = raw_single(classifier, lone_data)
    lone = lone_job_latency(classifier, lone_data, settings)
    single_s, lone_s = latency_summary(single), latency_summary(lone)
    result["lone_job"] = {
        "raw_single_job": single_s,
        "worker": lone_s,
        "max_wait_ms": settings.max_wait_ms,
        "p50_budget_ms": round(single_s["p50_ms"] + settings.max_wait_ms, 2),
        "p99_budget_ms": round(single_s["p99_ms"] + settings.max_wait_ms, 2),
    }
    progress(f"  raw single {single_s}; worker {lone_s}")

    progress(f"slow path: through a moto server, {config.moto_jobs} jobs")
    try:
        result["moto"] = moto_measurements(
            classifier, config.moto_jobs, settings.replace(receivers=max(2, settings.receivers)), config.repeats
        )
    except Exception as exc:  # the emulator is optional: report why it is missing
        log(f"  moto measurement failed: {exc!r}")
        result["moto"] = {"error": repr(exc)}

    mem = result["memory"]
    result["ratios"] = {
        "worker_vs_raw_infer_best": round(mem["worker_vs_raw_infer_best"], 3),
        "worker_vs_raw_infer_same_batch": round(mem["worker_vs_raw_infer_same_batch"], 3),
        "worker_vs_raw_pipeline": round(mem["worker_vs_raw_pipeline"], 3),
        "worker_vs_one_at_a_time": round(mem["worker_vs_one_at_a_time"], 3),
        "one_at_a_time_vs_raw_infer_best": ratio(mem["one_at_a_time_memory"], mem["raw_infer_best"]),
    }
    if "worker" in result.get("moto", {}):
        moto = result["moto"]
        result["ratios"]["moto_worker_vs_raw_infer_best"] = ratio(moto["worker"]["images_per_s"], mem["raw_infer_best"])
        result["ratios"]["moto_worker_vs_moto_one_at_a_time"] = ratio(
            moto["worker"]["images_per_s"], moto["one_at_a_time"]["images_per_s"]
        )
    result["single_job_p50_ms"] = median([s * 1000 for s in single])
    return result
