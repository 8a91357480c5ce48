"""Priority benchmark: how long an urgent job takes from POST to result while a normal backlog drains.

    python bench/priority.py                          # 500 queued jobs, up to 30 probes (~4-5 min on 2 cores)
    python bench/priority.py --backlog 100 --probes 8 # a quick look

One local stack (moto server, the API under uvicorn, one worker process, as ``make run`` starts them).
Twice, on the same stack: ``--backlog`` normal jobs are queued through ``POST /predict`` with no
worker running, a worker starts, and while the backlog drains a probe job is posted every
``--interval`` seconds (until the backlog falls below a tenth of its size) and followed to its
result. The first pass posts the probes with ``priority: high``; the second posts them as normal
jobs, as a service without priorities would. Each probe's time is its record's ``finished_at`` minus
``created_at`` (the API's clock, so polling adds nothing). The figures go to stdout and to
``bench/results/priority.json`` and ``priority.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.common import RESULTS, cat_jpeg, latency_summary, log  # noqa: E402
from twopass.local.stack import LocalStack, free_port  # noqa: E402


@dataclass
class Pass:
    """One drain of the backlog with probes posted as ``probe_priority``."""

    name: str
    probe_priority: str
    backlog: int
    queue_seconds: float = 0.0
    drain_seconds: float = 0.0
    probe_seconds: list[float] = field(default_factory=list)
    #: How many backlog jobs were still waiting when each probe was posted.
    waiting_at_post: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "probe_priority": self.probe_priority,
            "backlog": self.backlog,
            "probes": latency_summary(self.probe_seconds),
            "backlog_waiting_at_post_median": sorted(self.waiting_at_post)[len(self.waiting_at_post) // 2],
            "backlog_drain_s": round(self.drain_seconds, 1),
            "backlog_jobs_per_s": round(self.backlog / self.drain_seconds, 1),
            "queueing_s": round(self.queue_seconds, 1),
        }


def epoch(stamp: str) -> float:
    """``2026-11-29T19:11:17.871Z`` → epoch seconds."""
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class Bench:
    def __init__(self, stack: LocalStack, image: bytes) -> None:
        import httpx

        self.stack = stack
        self.body = {"image_data": base64.b64encode(image).decode()}
        self.client = httpx.Client(base_url=stack.api_url, timeout=60, headers={"x-api-key": stack.api_key or ""})

    def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One API call; a 503 (the backends slow on a loaded machine) is retried after its Retry-After,
        as the SDK does."""
        for _ in range(10):
            response = self.client.request(method, path, **kwargs)
            if response.status_code != 503:
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body
            time.sleep(float(response.headers.get("retry-after", "1")))
        response.raise_for_status()
        raise AssertionError("unreachable")

    def post(self, priority: str | None = None) -> str:
        body = dict(self.body, **({"priority": priority} if priority else {}))
        return str(self.call("POST", "/predict", json=body)["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.call("GET", f"/job/{job_id}")

    def waiting(self) -> int:
        attrs = self.stack.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.resources["JobsQueue"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def finish_times(self, job_ids: list[str]) -> dict[str, float]:
        """``finished_at`` of every job in ``job_ids``, once none of them is queued or running."""
        wanted = set(job_ids)
        while True:
            done: dict[str, float] = {}
            cursor: str | None = None
            while True:  # the caller's jobs, newest first, a page of 100 at a time
                params: dict[str, Any] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
                page = self.call("GET", "/jobs", params=params)
                for body in page["jobs"]:
                    if body["job_id"] in wanted and body["status"] not in ("queued", "running"):
                        if body["status"] != "succeeded":
                            raise RuntimeError(f"job {body['job_id']} ended {body['status']}: {body.get('error')}")
                        done[body["job_id"]] = epoch(body["finished_at"])
                cursor = page["next_cursor"]
                if not cursor:
                    break
            if len(done) == len(wanted):
                return done
            time.sleep(2)

    def run(self, run: Pass, probes: int, interval: float) -> Pass:
        log(f"[{run.name}] queueing {run.backlog} normal jobs (no worker running)")
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            backlog = list(pool.map(lambda _: self.post(), range(run.backlog)))
        run.queue_seconds = time.perf_counter() - started
        name = f"worker-{run.name}"
        proc = self.stack.start_worker(name)
        worker_started = time.time()
        log(f"[{run.name}] worker started; a {run.probe_priority} probe every {interval:g} s while the backlog drains")
        probe_ids: list[str] = []
        lock = threading.Lock()
        latencies: dict[str, float] = {}

        def follow(job_id: str) -> None:
            while True:
                body = self.job(job_id)
                if body["status"] not in ("queued", "running"):
                    with lock:
                        latencies[job_id] = epoch(body["finished_at"]) - epoch(body["created_at"])
                    return
                time.sleep(0.5)  # the time is the record's own: polling only says when to read it

        followers: list[threading.Thread] = []
        for _ in range(probes):
            waiting = self.waiting()
            if waiting < run.backlog // 10:
                break
            run.waiting_at_post.append(waiting)
            job_id = self.post(run.probe_priority)
            probe_ids.append(job_id)
            thread = threading.Thread(target=follow, args=(job_id,), daemon=True)
            thread.start()
            followers.append(thread)
            time.sleep(interval)
        for thread in followers:
            thread.join()
        finished = self.finish_times(backlog)
        run.drain_seconds = max(finished.values()) - worker_started
        run.probe_seconds = [latencies[j] for j in probe_ids]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        summary = run.summary()["probes"]
        log(f"[{run.name}] {len(probe_ids)} probes: p50 {summary['p50_ms'] / 1000:.2f} s, "
            f"p99 {summary['p99_ms'] / 1000:.2f} s; backlog drained in {run.drain_seconds:.0f} s")  # fmt: skip
        return run


def markdown(results: dict[str, Any]) -> str:
    rows = [
        "| probes posted as | probes | POST → result p50 | p99 | backlog waiting at post (median) | backlog drain |",
        "|---|---|---|---|---|---|",
    ]
    for run in results["passes"]:
        p = run["probes"]
        rows.append(
            f"| `{run['probe_priority']}` | {p['n']} | {p['p50_ms'] / 1000:.2f} s | {p['p99_ms'] / 1000:.2f} s | "
            f"{run['backlog_waiting_at_post_median']} | {run['backlog_drain_s']:.0f} s "
            f"({run['backlog_jobs_per_s']:.1f} jobs/s) |"
        )
    setup = results["setup"]
    return "\n".join(
        [
            f"# Priority benchmark ({results['date']})",
            "",
            f"`python bench/priority.py --backlog {setup['backlog']} --probes {setup['probes']} "
            f"--interval {setup['interval']}` on {setup['cpus']} CPU cores: the local stack (moto server, "
            "the API under uvicorn, one worker process with the default settings, the slow model on CPU). "
            f"{setup['backlog']} normal jobs are queued first, then a worker starts and a probe is posted every "
            f"{setup['interval']} s while the backlog drains; a probe's time is its `finished_at` minus "
            "`created_at`.",
            "",
            *rows,
            "",
            f"Speed-up of high-priority probes: p50 {results['speedup_p50']}×, p99 {results['speedup_p99']}×.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/priority.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=500, help="normal jobs queued before the worker starts")
    parser.add_argument("--probes", type=int, default=30, help="most probes per pass")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where priority.json and priority.md go")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="twopass-priority-") as logs:
        stack = LocalStack(
            api_port=free_port(),
            emulator_port=free_port(),
            workers=0,
            log_dir=Path(logs),
            env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "5"},
        )
        with stack:
            bench = Bench(stack, cat_jpeg())
            passes = [
                bench.run(Pass("priority", "high", args.backlog), args.probes, args.interval),
                bench.run(Pass("no-priority", "normal", args.backlog), args.probes, args.interval),
            ]
    with_priority, without = (p.summary() for p in passes)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setup": {"backlog": args.backlog, "probes": args.probes, "interval": args.interval, "cpus": os.cpu_count()},
        "passes": [with_priority, without],
        "speedup_p50": round(without["probes"]["p50_ms"] / with_priority["probes"]["p50_ms"], 1),
        "speedup_p99": round(without["probes"]["p99_ms"] / with_priority["probes"]["p99_ms"], 1),
        "raw": [asdict(p) for p in passes],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "priority.json").write_text(json.dumps(results, indent=2) + "\n")
    page = markdown(results)
    (args.out / "priority.md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
