"""Slow path: raw onnxruntime (the limit) vs the twopass worker vs a one-job-at-a-time loop.

A "setup" is the worker's knobs plus how many model sessions run side by side: ``sessions=2``
is what ``TWOPASS_WORKER_PROCESSES=2`` does in production (one session per process); in this
process it is two :class:`Worker` objects on the same source and store.
"""

from __future__ import annotations

import itertools
import resource
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import latency_summary, log, median, median_of_runs, photos, ratio
from twopass.config import Settings
from twopass.imaging import load_tensor
from twopass.jobs.base import JobRecord, JobStore, Start, new_job_id
from twopass.jobs.memory import MemoryJobStore
from twopass.models.runtime import Classifier
from twopass.payloads import PayloadStore
from twopass.queue.base import JobMessage, JobPublisher, MessageSource
from twopass.queue.memory import MemoryQueue
from twopass.worker import Worker

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class Setup:
    """Worker knobs and parallel sessions; ``intra_op_threads=0`` lets onnxruntime use every core."""

    max_batch_size: int = 8
    decode_threads: int = 2
    intra_op_threads: int = 0
    sessions: int = 1

    def settings(self) -> Settings:
        return slow_settings(
            max_batch_size=self.max_batch_size,
            decode_threads=self.decode_threads,
            intra_op_threads=self.intra_op_threads,
        )

    def env(self) -> dict[str, str]:
        """The same setup as production environment variables."""
        return {
            "TWOPASS_MAX_BATCH_SIZE": str(self.max_batch_size),
            "TWOPASS_DECODE_THREADS": str(self.decode_threads),
            "TWOPASS_INTRA_OP_THREADS": str(self.intra_op_threads),
            "TWOPASS_WORKER_PROCESSES": str(self.sessions),
        }


#: The seed's backend: one default session (onnxruntime picks the threads), batch 1.
SEED = Setup(max_batch_size=1, decode_threads=1, intra_op_threads=0, sessions=1)
#: Sweep: one session using both cores vs one single-threaded session per core.
GRID = (
    *(Setup(b, d, 0, 1) for b in (4, 8, 16) for d in (1, 2)),
    Setup(8, 1, 1, 1),
    *(Setup(b, 1, 1, 2) for b in (4, 8, 16)),
)


@dataclass(frozen=True)
class SlowConfig:
    """What a slow-path run uses; ``bench/run.py`` fills it from the command line."""

    jobs: int = 200
    moto_jobs: int = 120
    repeats: int = 3
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32)
    raw_images: int = 64
    lone_jobs: int = 50
    #: Jobs the one-at-a-time loop runs at least (in memory, up to ``jobs``; half as many through moto,
    #: where it takes as many as it needs): enough for a steady rate.
    loop_jobs: int = 40
    tune: bool = True
    tune_jobs: int = 96
    tune_rounds: int = 2
    #: Used when not tuning.
    setup: Setup = Setup(8, 1, 1, 2)


class Finished:
    """Results as a store sees them: when each job's was recorded, and the batch it ran in.

    Read from the result the worker records (its ``batch_size`` is part of ``GET /job``), so the
    benchmark needs no counters inside the worker.
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.done_at: dict[str, float] = {}
        self.batch_sizes: list[int] = []
        self.reached = threading.Event()
        self._lock = threading.Lock()

    def record(self, job_id: str, result: dict[str, Any], wrote: bool) -> None:
        with self._lock:
            self.done_at[job_id] = time.perf_counter()
            if wrote:
                self.batch_sizes.append(int(result.get("batch_size", 1)))
            if len(self.done_at) >= self.target:
                self.reached.set()

    def batch_stats(self) -> dict[str, Any]:
        """Mean batch size and batch count: a batch of ``n`` jobs shows up ``n`` times, as ``1/n`` each."""
        with self._lock:
            batches = sum(1 / size for size in self.batch_sizes)
            jobs = len(self.batch_sizes)
        return {"mean_batch_size": round(jobs / batches, 2) if batches else 0.0, "batches": round(batches)}


class CountingStore(MemoryJobStore):
    """A memory store that tells :class:`Finished` about every result."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.finished = Finished(target)

    def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
        wrote = super().succeed(job_id, result, start=start)
        self.finished.record(job_id, result, wrote)
        return wrote


def slow_settings(**changes: Any) -> Settings:
    base = Settings().replace(
        providers=("CPUExecutionProvider",), poll_wait_seconds=1, heartbeat_seconds=3600.0, log_level="WARNING"
    )
    return base.replace(**changes)


class Sessions:
    """Model sessions by thread count, loaded once and reused by every measurement."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[int, int], Classifier] = {}

    def get(self, intra_op_threads: int, index: int = 0) -> Classifier:
        key = (intra_op_threads, index)
        if key not in self._loaded:
            settings = slow_settings(intra_op_threads=intra_op_threads)
            self._loaded[key] = Classifier.from_location(
                settings.slow_model, providers=settings.providers, intra_op_threads=intra_op_threads
            )
        return self._loaded[key]

    def for_setup(self, setup: Setup) -> list[Classifier]:
        return [self.get(setup.intra_op_threads, i) for i in range(setup.sessions)]


def corpus(n: int) -> list[bytes]:
    """``n`` real photos, cycling through the set."""
    return list(itertools.islice(itertools.cycle(photos()), n))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def in_parallel(fns: Sequence[Callable[[], object]]) -> float:
    """Run ``fns`` on one thread each; wall seconds until the last ends."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(fns)) as pool:
        for f in [pool.submit(fn) for fn in fns]:
            f.result()
    return time.perf_counter() - t0


# -- raw onnxruntime ---------------------------------------------------------------------------


def raw_infer(classifiers: Sequence[Classifier], batch: int, images: int) -> float:
    """Images/s of ``session.run`` alone on preprocessed tensors, each session on its own thread."""
    tensors = [classifiers[0].tensor(p, max_pixels=MAX_PIXELS) for p in photos()]
    x = np.stack(list(itertools.islice(itertools.cycle(tensors), batch)))
    feed = classifiers[0].card.input_name
    for c in classifiers:
        c.session.run(None, {feed: x})  # this shape's first run allocates
    runs = max(2, -(-images // (batch * len(classifiers))))

    def loop(c: Classifier) -> Callable[[], None]:
        def go() -> None:
            for _ in range(runs):
                c.session.run(None, {feed: x})

        return go

    return runs * batch * len(classifiers) / in_parallel([loop(c) for c in classifiers])


def raw_pipeline(classifiers: Sequence[Classifier], data: Sequence[bytes], batch: int, decode_threads: int) -> float:
    """Images/s of a hand-written pipeline: decode in a pool, batched ``session.run``, per session."""
    spec = classifiers[0].card.preprocessing
    feed = classifiers[0].card.input_name
    shares = [list(data[i :: len(classifiers)]) for i in range(len(classifiers))]

    def pipeline(c: Classifier, share: list[bytes]) -> Callable[[], None]:
        def go() -> None:
            with ThreadPoolExecutor(decode_threads) as pool:
                futures = [pool.submit(load_tensor, d, spec, max_pixels=MAX_PIXELS) for d in share]
                for i in range(0, len(futures), batch):
                    c.session.run(None, {feed: np.stack([f.result() for f in futures[i : i + batch]])})

        return go

    return len(data) / in_parallel([pipeline(c, s) for c, s in zip(classifiers, shares, strict=True)])


def raw_single(classifier: Classifier, data: Sequence[bytes]) -> list[float]:
    """Seconds per job of decode + batch-1 inference, one after the other (the lone-job floor)."""
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


def run_workers(
    classifiers: Sequence[Classifier],
    source: MessageSource,
    store: JobStore,
    finished: Finished,
    settings: Settings,
    timeout: float = 600,
) -> tuple[float, dict[str, Any]]:
    """One worker per session on a preloaded source; seconds until every result is in, and batch stats."""
    workers = [Worker(c, source, store, settings) for c in classifiers]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    done = finished.reached.wait(timeout)
    elapsed = time.perf_counter() - t0
    for w in workers:
        w.stop()
    for t in threads:
        t.join(timeout=30)
    if not done:
        raise TimeoutError("the worker did not finish the preloaded jobs")
    return elapsed, finished.batch_stats()


def worker_memory(
    classifiers: Sequence[Classifier], data: Sequence[bytes], settings: Settings
) -> tuple[float, dict[str, Any]]:
    """Images/s of the worker(s) on MemoryQueue + MemoryJobStore with ``data`` preloaded."""
    queue, store = MemoryQueue(visibility=600), CountingStore(len(data))
    preload(store, queue, data)
    elapsed, stats = run_workers(classifiers, queue, store, store.finished, settings)
    return len(data) / elapsed, stats


def one_at_a_time(classifier: Classifier, source: MessageSource, store: JobStore, n: int) -> float:
    """The seed backend's loop: receive 1, decode, infer batch 1, write, ack. Images/s."""
    done = 0
    payloads = PayloadStore()
    t0 = time.perf_counter()
    while done < n:
        for d in source.receive(1, 1):
            prediction = classifier.predict(classifier.tensor(payloads.image(d.message), max_pixels=MAX_PIXELS))
            store.succeed(d.message.job_id, {"model": classifier.name, "label": prediction.label})
            source.ack([d])
            done += 1
    return n / (time.perf_counter() - t0)


def one_at_a_time_memory(classifier: Classifier, data: Sequence[bytes]) -> float:
    queue, store = MemoryQueue(visibility=600), MemoryJobStore()
    preload(store, queue, data)
    return one_at_a_time(classifier, queue, store, len(data))


def lone_job_latency(classifiers: Sequence[Classifier], data: Sequence[bytes], settings: Settings) -> list[float]:
    """Publish → result recorded, one job at a time into idle worker(s) on a MemoryQueue."""
    queue, store = MemoryQueue(visibility=600), CountingStore(10**9)
    workers = [Worker(c, queue, store, settings) for c in classifiers]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    time.sleep(0.3)
    out = []
    try:
        for d in data:
            job_id = new_job_id()
            store.create(JobRecord(job_id=job_id))
            t0 = time.perf_counter()
            queue.publish(JobMessage(job_id=job_id, image=d))
            deadline = time.monotonic() + 30
            while job_id not in store.finished.done_at:
                if time.monotonic() > deadline:
                    raise TimeoutError("lone job not recorded within 30 s")
                time.sleep(0.0005)
            out.append(store.finished.done_at[job_id] - t0)
            time.sleep(0.05)  # idle again before the next one
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(timeout=30)
    return out


# -- through the emulator -----------------------------------------------------------------------


def moto_measurements(
    classifiers: Sequence[Classifier], seed: Classifier, n: int, settings: Settings, repeats: int, loop_jobs: int = 20
) -> dict[str, Any]:
    """Worker(s) and the one-at-a-time loop through a moto server (SqsSource + DynamoJobStore)."""
    from bench.common import moto_server_process, pointed_at, process_cpu_seconds, provision_moto
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.queue.sqs import SqsPublisher, SqsSource

    class CountingDynamo(DynamoJobStore):
        def __init__(self, table: str, target: int) -> None:
            super().__init__(table)
            self.finished = Finished(target)

        def succeed(self, job_id: str, result: dict[str, Any], *, start: Start | None = None) -> bool:
            wrote = super().succeed(job_id, result, start=start)
            self.finished.record(job_id, result, wrote)
            return wrote

    out: dict[str, Any] = {}
    with moto_server_process() as (endpoint, proc):
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
            log(f"  moto drain (receive + delete, no model): {out['emulator_drain_msgs_per_s']} msg/s")
            worker_runs, loop_runs = [], []
            for _ in range(repeats):
                store = CountingDynamo(table, n)
                preload(store, publisher, corpus(n), threads=4)
                moto0 = process_cpu_seconds(proc.pid)
                elapsed, stats = run_workers(classifiers, source, store, store.finished, settings)
                worker_runs.append(
                    {
                        "images_per_s": n / elapsed,
                        "mean_batch_size": stats["mean_batch_size"],
                        "moto_cpu_ms_per_job": (process_cpu_seconds(proc.pid) - moto0) / n * 1000,
                    }
                )
                m = max(loop_jobs, n // 3)
                store = CountingDynamo(table, m)
                preload(store, publisher, corpus(m), threads=4)
                moto0 = process_cpu_seconds(proc.pid)
                rate = one_at_a_time(seed, source, store, m)
                loop_runs.append(
                    {"images_per_s": rate, "moto_cpu_ms_per_job": (process_cpu_seconds(proc.pid) - moto0) / m * 1000}
                )
                log(f"  moto: worker {worker_runs[-1]}, one-at-a-time {loop_runs[-1]}")
            out["worker"] = median_of_runs(worker_runs)
            out["one_at_a_time"] = median_of_runs(loop_runs)
            out["ratio_runs"] = [
                round(w["images_per_s"] / o["images_per_s"], 3) for w, o in zip(worker_runs, loop_runs, strict=True)
            ]
    return out


# -- the whole section --------------------------------------------------------------------------


def tune(sessions: Sessions, data: Sequence[bytes], rounds: int) -> tuple[Setup, list[dict[str, Any]]]:
    """Sweep the worker's knobs on this machine in interleaved rounds; the best by median."""
    rates: dict[Setup, list[float]] = {s: [] for s in GRID}
    batches: dict[Setup, float] = {}
    for _ in range(rounds):
        for setup in GRID:
            rate, stats = worker_memory(sessions.for_setup(setup), data, setup.settings())
            rates[setup].append(rate)
            batches[setup] = stats["mean_batch_size"]
    rows = []
    for setup in GRID:
        rows.append(
            {
                **setup.__dict__,
                "images_per_s": round(median(rates[setup]), 2),
                "runs": [round(r, 2) for r in rates[setup]],
                "mean_batch_size": batches[setup],
            }
        )
        log(f"  tune {rows[-1]}")
    best = max(rows, key=lambda r: r["images_per_s"])
    return Setup(best["max_batch_size"], best["decode_threads"], best["intra_op_threads"], best["sessions"]), rows


def run(config: SlowConfig, progress: Callable[[str], None] = log) -> dict[str, Any]:
    result: dict[str, Any] = {"config": {**config.__dict__, "batch_sizes": list(config.batch_sizes)}}
    result["config"]["setup"] = config.setup.__dict__
    sessions = Sessions()
    setup = config.setup
    if config.tune:
        progress(f"slow path: tuning the worker ({len(GRID)} setups × {config.tune_rounds} rounds)")
        setup, result["tuning"] = tune(sessions, corpus(config.tune_jobs), config.tune_rounds)
    settings = setup.settings()
    result["setup"] = setup.__dict__
    result["setup_env"] = setup.env()
    result["settings"] = {
        "max_batch_size": settings.max_batch_size,
        "max_wait_ms": settings.max_wait_ms,
        "decode_threads": settings.decode_threads,
        "intra_op_threads": settings.intra_op_threads,
        "receivers": settings.receivers,
        "sessions (TWOPASS_WORKER_PROCESSES)": setup.sessions,
    }
    progress(f"slow path: worker setup {setup}")
    workers = sessions.for_setup(setup)
    seed = sessions.get(0)
    one_each = [sessions.get(1, 0), sessions.get(1, 1)]

    progress("slow path: raw onnxruntime, batch sizes " + ", ".join(map(str, config.batch_sizes)))
    raw_runs: list[dict[str, float]] = []
    for _ in range(config.repeats):
        row = {f"1x2t_b{b}": raw_infer([seed], b, config.raw_images) for b in config.batch_sizes}
        row |= {f"2x1t_b{b}": raw_infer(one_each, b, config.raw_images) for b in config.batch_sizes}
        raw_runs.append(row)
        progress("  raw " + ", ".join(f"{k}={v:.1f}" for k, v in row.items()) + " img/s")
    raw = median_of_runs(raw_runs)
    result["raw_infer_images_per_s"] = raw
    best_key = max((k for k in raw if k != "runs"), key=lambda k: raw[k])
    result["raw_best"] = best_key
    best_classifiers = [seed] if best_key.startswith("1x2t") else one_each
    best_batch = int(best_key.split("_b")[1])

    progress(f"slow path: {config.jobs} jobs — raw, raw pipeline, worker, one-at-a-time; interleaved rounds")
    data = corpus(config.jobs)
    runs: list[dict[str, float]] = []
    for _ in range(config.repeats):
        row = {}
        row["raw_infer_best"] = raw_infer(best_classifiers, best_batch, config.raw_images * 2)
        row["raw_infer_worker_setup"] = raw_infer(workers, setup.max_batch_size, config.raw_images * 2)
        c0 = cpu_seconds()
        row["raw_pipeline"] = raw_pipeline(workers, data, setup.max_batch_size, setup.decode_threads)
        row["raw_pipeline_cpu_ms_per_image"] = (cpu_seconds() - c0) / len(data) * 1000
        c0 = cpu_seconds()
        rate, stats = worker_memory(workers, data, settings)
        row["worker_cpu_ms_per_image"] = (cpu_seconds() - c0) / len(data) * 1000
        row["worker_memory"] = rate
        row["worker_mean_batch"] = stats["mean_batch_size"]
        row["one_at_a_time_memory"] = one_at_a_time_memory(seed, data[: max(config.loop_jobs, len(data) // 3)])
        row["worker_vs_raw_infer_best"] = row["worker_memory"] / row["raw_infer_best"]
        row["worker_vs_raw_infer_same_setup"] = row["worker_memory"] / row["raw_infer_worker_setup"]
        row["worker_vs_raw_pipeline"] = row["worker_memory"] / row["raw_pipeline"]
        row["worker_vs_one_at_a_time"] = row["worker_memory"] / row["one_at_a_time_memory"]
        runs.append(row)
        progress("  " + ", ".join(f"{k}={v:.2f}" for k, v in row.items()))
    result["memory"] = median_of_runs(runs)

    progress(f"slow path: lone-job latency over {config.lone_jobs} jobs")
    lone_data = corpus(config.lone_jobs)
    single = raw_single(workers[0], lone_data)
    single_default = raw_single(seed, lone_data)
    lone = lone_job_latency(workers, lone_data, settings)
    single_s, lone_s = latency_summary(single), latency_summary(lone)
    result["lone_job"] = {
        "raw_single_job": single_s,
        "raw_single_job_default_session": latency_summary(single_default),
        "worker": lone_s,
        "max_wait_ms": settings.max_wait_ms,
        "p50_budget_ms": round(single_s["p50_ms"] + settings.max_wait_ms, 2),
        "p99_budget_ms": round(single_s["p99_ms"] + settings.max_wait_ms, 2),
    }
    progress(f"  raw single {single_s}; worker {lone_s}")

    progress(f"slow path: through a moto server, {config.moto_jobs} jobs")
    try:
        result["moto"] = moto_measurements(
            workers,
            seed,
            config.moto_jobs,
            settings.replace(receivers=max(2, settings.receivers)),
            config.repeats,
            loop_jobs=max(1, config.loop_jobs // 2),
        )
    except Exception as exc:  # the emulator is optional: report why it is missing
        log(f"  moto measurement failed: {exc!r}")
        result["moto"] = {"error": repr(exc)}

    mem = result["memory"]
    result["ratios"] = {
        "worker_vs_raw_infer_best": round(mem["worker_vs_raw_infer_best"], 3),
        "worker_vs_raw_infer_same_setup": round(mem["worker_vs_raw_infer_same_setup"], 3),
        "worker_vs_raw_pipeline": round(mem["worker_vs_raw_pipeline"], 3),
        "worker_vs_one_at_a_time": round(mem["worker_vs_one_at_a_time"], 3),
        "one_at_a_time_vs_raw_infer_best": ratio(mem["one_at_a_time_memory"], mem["raw_infer_best"]),
    }
    moto = result.get("moto", {})
    if "worker" in moto:
        result["ratios"]["moto_worker_vs_raw_infer_best"] = ratio(moto["worker"]["images_per_s"], mem["raw_infer_best"])
        result["ratios"]["moto_worker_vs_moto_one_at_a_time"] = round(median(moto["ratio_runs"]), 3)
    return result
