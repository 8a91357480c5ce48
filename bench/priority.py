"""Priority benchmark: how long an urgent job takes from POST to result while a normal backlog drains.

    python bench/priority.py                           # 500 queued jobs, 30 probes of each kind (~3 min, 2 cores)
    python bench/priority.py --backlog 100 --probes 6  # a quick look

One local stack (moto server, the API under uvicorn, one worker process with the default settings,
as ``make run`` starts them). ``--backlog`` normal jobs are queued through ``POST /predict`` with no
worker running; then a worker starts, and once it is working through the backlog a probe job is
posted every ``--interval`` seconds, alternately with ``priority: high`` and as a normal job (what an
urgent job is on a service without priorities), until each kind has ``--probes`` or the backlog is
down to a tenth. Both kinds are measured in the same drain, under the same load. A probe's time is
its record's ``finished_at`` minus ``created_at`` (the API's clock, so polling adds nothing). The
figures go to stdout and to ``bench/results/priority.json`` and ``priority.md``.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.common import RESULTS, cat_jpeg, latency_summary, log, percentile  # noqa: E402
from twopass.local.stack import LocalStack, free_port  # noqa: E402

KINDS = ("high", "normal")


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
        """Normal jobs not yet taken by the worker (SQS's approximate count)."""
        attrs = self.stack.client("sqs").get_queue_attributes(
            QueueUrl=self.stack.resources["JobsQueue"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"])

    def finished(self, job_ids: list[str]) -> dict[str, float]:
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

    def run(self, backlog_size: int, probes: int, interval: float) -> dict[str, Any]:
        log(f"queueing {backlog_size} normal jobs (no worker running)")
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            backlog = list(pool.map(lambda _: self.post(), range(backlog_size)))
        queueing = time.perf_counter() - started
        proc = self.stack.start_worker("worker-bench")
        worker_started = time.time()
        # Steady state: probes start once the worker has its model loaded and results coming out.
        while not self.call("GET", "/jobs", params={"status": "succeeded", "limit": 1})["jobs"]:
            time.sleep(0.2)
        log(f"worker draining; a probe every {interval:g} s, high and normal in turn")
        posted: dict[str, list[str]] = {kind: [] for kind in KINDS}
        waiting: dict[str, list[int]] = {kind: [] for kind in KINDS}
        times: dict[str, float] = {}
        lock = threading.Lock()

        def follow(job_id: str) -> None:
            while True:
                body = self.job(job_id)
                if body["status"] not in ("queued", "running"):
                    with lock:
                        times[job_id] = epoch(body["finished_at"]) - epoch(body["created_at"])
                    return
                time.sleep(0.5)  # the time is the record's own: polling only says when to read it

        followers: list[threading.Thread] = []
        first = time.monotonic()
        for i in range(2 * probes):
            time.sleep(max(0.0, first + i * interval - time.monotonic()))  # on a fixed schedule
            kind = KINDS[i % 2]
            depth = self.waiting()
            if depth < backlog_size // 10:
                break
            waiting[kind].append(depth)
            job_id = self.post(kind)
            posted[kind].append(job_id)
            thread = threading.Thread(target=follow, args=(job_id,), daemon=True)
            thread.start()
            followers.append(thread)
        for thread in followers:
            thread.join()
        drain = max(self.finished(backlog).values()) - worker_started
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        out: dict[str, Any] = {
            "backlog": backlog_size,
            "queueing_s": round(queueing, 1),
            "backlog_drain_s": round(drain, 1),
            "backlog_jobs_per_s": round(backlog_size / drain, 2),
        }
        for kind in KINDS:
            seconds = [times[j] for j in posted[kind]]
            out[kind] = {
                **latency_summary(seconds),
                "backlog_waiting_at_post_median": round(percentile(waiting[kind], 50)),
                "seconds": [round(s, 3) for s in seconds],
            }
            log(f"{kind}: {len(seconds)} probes, p50 {out[kind]['p50_ms'] / 1000:.2f} s, "
                f"p99 {out[kind]['p99_ms'] / 1000:.2f} s")  # fmt: skip
        return out


def markdown(results: dict[str, Any]) -> str:
    setup, run = results["setup"], results["run"]
    rows = [
        "| probe posted as | probes | POST → result p50 | p99 | normal jobs still queued at post (median) |",
        "|---|---|---|---|---|",
    ]
    for kind in KINDS:
        p = run[kind]
        rows.append(
            f"| `{kind}` | {p['n']} | {p['p50_ms'] / 1000:.2f} s | {p['p99_ms'] / 1000:.2f} s | "
            f"{p['backlog_waiting_at_post_median']} |"
        )
    return "\n".join(
        [
            f"# Priority benchmark ({results['date']})",
            "",
            f"`python bench/priority.py --backlog {setup['backlog']} --probes {setup['probes']} "
            f"--interval {setup['interval']}` on {setup['cpus']} CPU cores: the local stack (moto server, "
            "the API under uvicorn, one worker process with the default settings, the slow model on CPU). "
            f"{setup['backlog']} normal jobs are queued first; a worker then drains them "
            f"({run['backlog_drain_s']:.0f} s, {run['backlog_jobs_per_s']:.1f} jobs/s) while a probe is posted "
            f"every {setup['interval']} s, alternately with `priority: high` and as a normal job (an urgent "
            "job on a service without priorities). A probe's time is its `finished_at` minus `created_at`.",
            "",
            *rows,
            "",
            f"High priority against none: p50 {results['speedup_p50']}× faster, p99 {results['speedup_p99']}× faster.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/priority.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=500, help="normal jobs queued before the worker starts")
    parser.add_argument("--probes", type=int, default=30, help="most probes of each kind")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between probes (of either kind)")
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
            run = Bench(stack, cat_jpeg()).run(args.backlog, args.probes, args.interval)
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "setup": {"backlog": args.backlog, "probes": args.probes, "interval": args.interval, "cpus": os.cpu_count()},
        "run": run,
        "speedup_p50": round(run["normal"]["p50_ms"] / run["high"]["p50_ms"], 1),
        "speedup_p99": round(run["normal"]["p99_ms"] / run["high"]["p99_ms"], 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "priority.json").write_text(json.dumps(results, indent=2) + "\n")
    page = markdown(results)
    (args.out / "priority.md").write_text(page)
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
