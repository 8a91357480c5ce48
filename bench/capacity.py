"""Cost and capacity: the planner checked against the local stack, and the figures the cost model needs.

* **Validation**: the local stack (moto server, API, 1 or 2 worker processes) on this machine. A
  calibration measures what the planner takes as input: the service curve (each batch's model time by
  size, from the jobs' own ``slow.inference_ms``/``batch_size`` while a backlog drains) and the fixed
  overhead per job (lone jobs: latency minus model time). Then open-loop Poisson arrivals at two rates
  for ``run_seconds``; each job's latency is ``finished_at - created_at`` from its record. The simulator
  runs the same rates with those inputs and a fixed number of tasks; both are printed with their ratio.
* **Cost inputs**: log bytes per job (JSON logs and EMF lines, from the children's log files), the API
  handler's p50 for POST /predict and GET /job (Lambda handler, REST events, moto in-process), the
  calls per job (``bench/calls.py``), and this CPU's throughput and curve: written to ``measured.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import calls
from bench.common import REPO, cat_jpeg, free_port, log, median, percentile

MEASURED_JSON = REPO / "layers" / "twopass" / "twopass" / "data" / "measured.json"


@dataclass(frozen=True)
class CapacityConfig:
    workers: tuple[int, ...] = (1, 2)
    #: Arrival rates as shares of the capacity the calibration measured for that many workers.
    loads: tuple[float, ...] = (0.25, 0.5)
    run_seconds: float = 45.0
    calibrate_jobs: int = 40
    lone_jobs: int = 30
    seeds: int = 20
    calls_jobs: int = 64
    #: How long the idle worker of the calls count runs (its periods scaled down).
    calls_idle_seconds: float = calls.CallsConfig.idle_seconds
    handler_requests: int = 40
    env: dict[str, str] = field(default_factory=dict)


# -- HTTP: open-loop arrivals ---------------------------------------------------------------------


def _request(url: str, image: bytes) -> bytes:
    host = urlsplit(url).netloc
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(image)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + image


async def _post(url: str, request: bytes) -> str | None:
    from bench.http_load import read_response

    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        status, body = await read_response(reader)
    finally:
        writer.close()
    return str(json.loads(body)["job_id"]) if status == 200 else None


def open_loop(url: str, rate: float, seconds: float, seed: int, image: bytes) -> tuple[list[str], int]:
    """Poisson arrivals at ``rate``/s for ``seconds``, each POST on its own connection; (job ids, failures)."""
    import random

    rng = random.Random(seed)
    request = _request(url, image)

    async def run() -> tuple[list[str], int]:
        t0 = time.perf_counter()
        tasks = []
        at = rng.expovariate(rate)
        while at < seconds:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_post(url, request)))
            at += rng.expovariate(rate)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        ids = [r for r in results if isinstance(r, str)]
        return ids, len(results) - len(ids)

    return asyncio.run(run())


def post_now(url: str, n: int, image: bytes, concurrency: int = 4) -> list[str]:
    request = _request(url, image)

    async def run() -> list[str]:
        sem = asyncio.Semaphore(concurrency)

        async def one() -> str | None:
            async with sem:
                return await _post(url, request)

        return [r for r in await asyncio.gather(*(one() for _ in range(n))) if r]

    return asyncio.run(run())


# -- the local stack ------------------------------------------------------------------------------


def split_cores() -> tuple[set[int], set[int]] | None:
    """(the API's, emulator's and load's cores; the workers' cores), or None on one core or off Linux."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    half = len(cores) // 2
    return set(cores[:half]), set(cores[half:])


@contextlib.contextmanager
def local_stack(workers: int, env: dict[str, str], log_dir: Path) -> Iterator[Any]:
    """The local stack, its workers on cores of their own when the machine has two or more.

    ``make run`` starts workers at a low priority on the shared cores, so a laptop stays responsive;
    a GPU task instead has its instance to itself, and that is what the planner simulates. Here
    the API, the emulator and this load generator run on the first half of the cores and the
    workers, at normal priority, on the other half.
    """
    from twopass.local.stack import LocalStack

    split = split_cores()

    class Stack(LocalStack):
        def worker_command(self) -> list[str]:
            if split is None:
                return super().worker_command()
            return [sys.executable, "-m", "bench.pinned", ",".join(map(str, sorted(split[1]))), "twopass.worker"]

    before = os.sched_getaffinity(0) if split else None
    if split is not None:
        os.sched_setaffinity(0, split[0])  # inherited by the API and the emulator
    stack = Stack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=workers,
        log_dir=log_dir,
        api_key=None,
        # JSON logs and EMF lines as on AWS: their bytes are what CloudWatch would ingest.
        env={
            "TWOPASS_LOG_FORMAT": "json",
            "POWERTOOLS_METRICS_DISABLED": "false",
            # onnxruntime sizes its pool by the machine's cores, not the process's: one per core given.
            **({"TWOPASS_INTRA_OP_THREADS": str(len(split[1]))} if split else {}),
            **env,
        },
    )
    try:
        with stack:
            _wait_workers(stack, workers)
            yield stack
    finally:
        if before is not None:
            os.sched_setaffinity(0, before)


def _wait_workers(stack: Any, workers: int, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(f"{stack.api_url}/health/all", timeout=5) as resp:
                alive = json.loads(resp.read())["backends"]["worker"].get("alive", 0)
            if alive >= workers:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{workers} worker(s) not alive after {timeout} s")


def queued_times(log_dir: Path) -> dict[str, float]:
    """When the API sent each job to the queue: its ``job queued`` log line (JSON logs, ms resolution)."""
    from datetime import datetime

    out: dict[str, float] = {}
    for path in log_dir.glob("api*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"job queued' not in line:
                continue
            with contextlib.suppress(ValueError, KeyError, TypeError):
                entry = json.loads(line)
                at = datetime.strptime(entry["timestamp"], "%Y-%m-%d %H:%M:%S,%f%z")
                out[str(entry["job_id"])] = at.timestamp()
    return out


def job_records(
    stack: Any, job_ids: list[str], timeout: float = 180, log_dir: Path | None = None
) -> list[dict[str, Any]]:
    """The jobs' items once all are final: created_at, finished_at, batch size and model time.

    ``latency`` runs from the moment the API queued the job (read from its log in ``log_dir``) to
    the final write: the part the planner simulates. The fast answer before it is the API's, which
    scales by itself on Lambda; here it shares cores with the emulator and the load generator.
    """
    from boto3.dynamodb.types import TypeDeserializer

    db = stack.client("dynamodb")
    table = stack.service_env["TWOPASS_TABLE_NAME"]
    plain = TypeDeserializer()
    wanted = set(job_ids)
    deadline = time.monotonic() + timeout
    found: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for chunk in [list(wanted - set(found))[i : i + 100] for i in range(0, len(wanted - set(found)), 100)]:
            out = db.batch_get_item(RequestItems={table: {"Keys": [{"job_id": {"S": j}} for j in chunk]}})
            for item in out["Responses"].get(table, []):
                data = {k: plain.deserialize(v) for k, v in item.items()}
                if data.get("status") in ("succeeded", "failed") and data.get("finished_at"):
                    found[str(data["job_id"])] = data
        if len(found) == len(wanted):
            break
        time.sleep(0.5)
    if len(found) < len(wanted):
        raise TimeoutError(f"{len(wanted) - len(found)} of {len(wanted)} jobs not final after {timeout} s")
    queued = queued_times(log_dir) if log_dir is not None else {}
    out = []
    for data in found.values():
        result = data.get("result") or {}
        start = queued.get(str(data["job_id"]), float(data["created_at"]))
        out.append(
            {
                "latency": float(data["finished_at"]) - start,
                "batch_size": int(result.get("batch_size", 1)),
                "inference_s": float(result.get("inference_ms", 0)) / 1000,
                "finished_at": float(data["finished_at"]),
                "created_at": float(data["created_at"]),
            }
        )
    return out


def log_bytes(log_dir: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_size for p in log_dir.glob("*.log")}


# -- calibration and validation -------------------------------------------------------------------


def fit_curve(records: list[dict[str, Any]]) -> dict[int, float]:
    """Median model seconds by batch size seen, made non-decreasing, plus a line's value at 32.

    The sizes seen are kept as they are (the planner interpolates between them); beyond the largest
    the line a + b·size through all of them says how the time grows.
    """
    by_size: dict[int, list[float]] = {}
    for r in records:
        by_size.setdefault(r["batch_size"], []).append(r["inference_s"])
    sizes = sorted(by_size)
    points: dict[int, float] = {}
    floor = 0.0
    for size in sizes:
        floor = max(floor, median(by_size[size]))
        points[size] = round(floor, 5)
    if len(sizes) > 1 and sizes[-1] < 32:
        xs, ys = sizes, [points[x] for x in sizes]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        slope = max(
            sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs), 1e-4
        )
        points[32] = round(max(points[sizes[-1]], my + slope * (32 - mx)), 5)
    return points


def calibrate(stack: Any, config: CapacityConfig, image: bytes) -> dict[str, Any]:
    lone: list[dict[str, Any]] = []
    for _ in range(config.lone_jobs):
        lone += job_records(stack, post_now(stack.api_url, 1, image), log_dir=stack.log_dir)
        time.sleep(0.3)
    overheads = sorted(round(r["latency"] - r["inference_s"], 5) for r in lone)
    overhead = median(overheads)
    spread = [r["latency"] for r in lone]
    cv = statistics.stdev(spread) / statistics.fmean(spread) if len(spread) > 1 else 0.0
    ids = post_now(stack.api_url, config.calibrate_jobs, image)
    drained = job_records(stack, ids, log_dir=stack.log_dir)
    span = max(r["finished_at"] for r in drained) - min(r["created_at"] for r in drained)
    return {
        "overhead_s": round(overhead, 4),
        "overhead_samples_s": overheads,
        "cv": round(cv, 3),
        "lone_latency_p50_s": round(median([r["latency"] for r in lone]), 4),
        "curve": fit_curve(drained + lone),
        "batch_sizes_seen": sorted({r["batch_size"] for r in drained}),
        "capacity_jobs_per_s": round(len(drained) / span, 2),
    }


def predict(rate: float, config: CapacityConfig, curve: Any, worker: Any, workers: int) -> tuple[float, float]:
    """The simulator's median p50 and p99 over ``config.seeds`` runs as long as the measured one."""
    from twopass.tools import plan

    sims = [
        plan.simulate(
            plan.Load(rate, duration=config.run_seconds, seed=seed),
            curve,
            worker,
            plan.Scaling(initial_tasks=workers, fixed=True),
        )
        for seed in range(config.seeds)
    ]
    return median([s.p50 for s in sims if s.latencies]), median([s.p99 for s in sims if s.latencies])


def validate(config: CapacityConfig) -> dict[str, Any]:
    from twopass.config import Settings
    from twopass.tools import plan

    image = cat_jpeg()
    rows: list[dict[str, Any]] = []
    calibrations: dict[str, Any] = {}
    logs: dict[str, float] = {}
    for workers in config.workers:
        with tempfile.TemporaryDirectory() as tmp, local_stack(workers, config.env, Path(tmp)) as stack:
            settings = Settings.from_env(stack.app_env())
            log(f"capacity: {workers} worker(s): calibrating (lone jobs, then a backlog of {config.calibrate_jobs})")
            cal = calibrate(stack, config, image)
            calibrations[str(workers)] = cal
            log(f"  {cal}")
            curve = plan.ServiceCurve(tuple(cal["curve"].items()), f"measured: local stack, {workers} worker(s)")
            worker = plan.Worker(
                settings.max_batch_size,
                overhead_seconds=cal["overhead_s"],
                cv=cal["cv"],
                overhead_samples=tuple(cal["overhead_samples_s"]),
            )
            for share in config.loads:
                rate = round(share * cal["capacity_jobs_per_s"], 2)
                before = log_bytes(Path(tmp))
                ids, failures = open_loop(
                    stack.api_url, rate, config.run_seconds, seed=workers * 100 + int(share * 100), image=image
                )
                records = job_records(stack, ids, log_dir=stack.log_dir)
                after = log_bytes(Path(tmp))
                measured = [r["latency"] for r in records]
                own = plan.ServiceCurve(tuple(fit_curve(records).items()), "measured in this run")
                row = {
                    "workers": workers,
                    "rate": rate,
                    "jobs": len(records),
                    "failed_posts": failures,
                    "measured_p50_s": round(percentile(measured, 50), 4),
                    "measured_p99_s": round(percentile(measured, 99), 4),
                    "mean_batch": round(statistics.fmean(r["batch_size"] for r in records), 2),
                }
                for label, used in (("predicted", curve), ("predicted_run_curve", own)):
                    p50, p99 = predict(rate, config, used, worker, workers)
                    row[f"{label}_p50_s"], row[f"{label}_p99_s"] = round(p50, 4), round(p99, 4)
                    row[f"{label}_ratio_p50"] = round(p50 / row["measured_p50_s"], 3)
                    row[f"{label}_ratio_p99"] = round(p99 / row["measured_p99_s"], 3)
                row["ratio_p50"], row["ratio_p99"] = row["predicted_ratio_p50"], row["predicted_ratio_p99"]
                rows.append(row)
                log(f"  {row}")
                for name in after:
                    key = "api" if name == "api" else "worker"
                    logs[key] = logs.get(key, 0.0) + (after[name] - before.get(name, 0)) / max(1, len(records))
                # Averaged over the runs below.
            curve_rates = [
                round(cal["capacity_jobs_per_s"] * s, 2) for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
            ]
            calibrations[str(workers)]["simulated_curve"] = plan.latency_curve(
                curve_rates, curve, worker, plan.Scaling(initial_tasks=workers), duration=600.0
            )
    runs = len(rows) or 1
    return {
        "rows": rows,
        "calibrations": calibrations,
        "log_bytes_per_job": {k: round(v / runs) for k, v in logs.items()},
        "within_25_percent": all(0.75 <= r["ratio_p50"] <= 1.25 and 0.75 <= r["ratio_p99"] <= 1.25 for r in rows),
    }


def handler_ms(requests: int) -> dict[str, float]:
    """p50 of the Lambda handler for POST /predict and GET /job (REST events, moto in-process)."""
    from bench.fast_path import check_ok, moto_handler, predict_event

    with moto_handler() as handler:
        post = predict_event()
        for _ in range(5):
            check_ok(handler(post))
        posts, gets = [], []
        job_event = json.loads((REPO / "tests" / "events" / "rest_job.json").read_text())
        for _ in range(requests):
            t0 = time.perf_counter()
            answer = handler(post)
            posts.append(time.perf_counter() - t0)
            check_ok(answer)
            job_id = json.loads(answer["body"])["job_id"]
            event = json.loads(json.dumps(job_event).replace(job_event["pathParameters"]["job_id"], job_id))
            t0 = time.perf_counter()
            check_ok(handler(event))
            gets.append(time.perf_counter() - t0)
    return {"predict_p50_ms": round(median(posts) * 1000, 2), "job_p50_ms": round(median(gets) * 1000, 2)}


def run(config: CapacityConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {**config.__dict__, "workers": list(config.workers), "loads": list(config.loads)}}
    log("capacity: AWS calls per job")
    out["calls"] = calls.run(calls.CallsConfig(jobs=config.calls_jobs, idle_seconds=config.calls_idle_seconds))
    log("capacity: Lambda handler p50, POST /predict and GET /job")
    out["handler"] = handler_ms(config.handler_requests)
    log(f"  {out['handler']}")
    out["validation"] = validate(config)
    out["measured"] = measured_figures(out)
    out["cost"] = cost_tables(out["measured"])
    return out


def measured_figures(out: dict[str, Any]) -> dict[str, Any]:
    """``measured.json``: what the cost model and the planner read as measured."""
    from bench.common import machine

    row8 = next(r for r in out["calls"]["per_job"] if r["batch_size"] == 8)
    cal = out["validation"]["calibrations"]["1"]
    curve = {str(k): v for k, v in cal["curve"].items()}
    largest = max(int(k) for k in curve)
    cpu = machine()
    return {
        "source": f"make bench (bench/capacity.py) on {cpu.get('cpus', '?')} CPU(s) "
        f"({cpu.get('cpu_model', 'CPU')}), {time.strftime('%Y-%m-%d', time.gmtime())}",
        "api_calls": row8["api"],
        "worker_calls": row8["worker"],
        "worker_entries": row8["worker_entries"],
        "batch_size": 8,
        "message_bytes": row8["message_bytes_per_job"],
        "item_bytes_created": row8["item_bytes_created"],
        "item_bytes_final": row8["item_bytes_final"],
        "handler_ms_predict": out["handler"]["predict_p50_ms"],
        "handler_ms_job": out["handler"]["job_p50_ms"],
        "log_bytes_api": out["validation"]["log_bytes_per_job"].get("api", 0),
        "log_bytes_worker": out["validation"]["log_bytes_per_job"].get("worker", 0),
        "worker_calls_per_hour": out["calls"]["idle_worker"]["per_hour"],
        "image_bytes": len(cat_jpeg()),
        "cpu_images_per_second": round(largest / float(curve[str(largest)]), 2),
        "cpu_description": f"one local worker process, {cpu.get('cpus', '?')} shared CPU cores",
        "cpu_service_curve": curve,
        "worker_overhead_seconds": cal["overhead_s"],
    }


def cost_tables(measured: dict[str, Any]) -> dict[str, Any]:
    from twopass.tools import cost

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(measured, fh)
    figures = cost.Measured.load(Path(fh.name))
    Path(fh.name).unlink()
    out: dict[str, Any] = {}
    example = cost.compare(cost.Traffic(), cost.Fleet(), measured=figures)
    out["cpu_example"] = {"markdown": cost.markdown(example), **example.to_dict()}
    for ips in (100.0, 400.0, 1000.0):
        fleet = cost.Fleet(images_per_second=ips, throughput_source="input")
        c = cost.compare(cost.Traffic(), fleet, measured=figures)
        out[f"input_{int(ips)}"] = {"markdown": cost.markdown(c), **c.to_dict()}
    return out


def write_measured(measured: dict[str, Any], path: Path = MEASURED_JSON) -> None:
    path.write_text(json.dumps(measured, indent=2) + "\n")


if __name__ == "__main__":
    import argparse
    import os
    import sys

    from bench.common import quiet_twopass_logs

    parser = argparse.ArgumentParser(prog="python -m bench.capacity")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--run-seconds", type=float, default=30.0)
    parser.add_argument("--only-validation", action="store_true")
    parser.add_argument("--write-measured", action="store_true", help="update twopass/data/measured.json")
    a = parser.parse_args()
    quiet_twopass_logs()
    cfg = CapacityConfig(workers=tuple(int(w) for w in a.workers.split(",")), run_seconds=a.run_seconds)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        result = validate(cfg) if a.only_validation else run(cfg)
    if a.write_measured and not a.only_validation:
        write_measured(result["measured"])
    json.dump(result, sys.stdout, indent=1, default=str)
