"""Requests per job: every AWS call the API and the worker make, counted from botocore's events.

The real code runs against moto's in-process mock with the template's resources: the API app built
by ``TwopassService.from_settings`` behind FastAPI's test client, the worker built by
``build_worker`` (the SQS source, the DynamoDB store, its chores). :class:`bench.counting.CallCounter`
counts each call by service and operation; a tagger puts the calls of periodic chores (heartbeat,
dead-letter sweep, reconciler, start-up reads) apart from the calls that jobs cause.

* Per job: ``jobs`` jobs are submitted through ``POST /predict`` first (the API's calls), then one
  worker drains the backlog with ``max_batch_size`` = 1, 8 and 32 (its calls). A backlog is the case
  the amortisation is for; a trickle of lone jobs costs what batch size 1 shows.
* Per hour: an idle worker for ``idle_seconds`` with every period (heartbeat, sweeps, long poll)
  divided by ``time_scale``; its calls, scaled back, are what one worker costs per hour whatever the load.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from bench.common import cat_jpeg, log, patched_env

#: DynamoDB item key of the worker heartbeats (twopass.jobs.dynamodb.WORKERS_KEY).
_WORKERS_KEY = "#workers"
_CHORE_OPERATIONS = frozenset({"GetQueueAttributes", "DescribeTable", "Query", "ListQueues"})


@dataclass(frozen=True)
class CallsConfig:
    jobs: int = 96
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    idle_seconds: float = 12.0
    time_scale: float = 10.0


@contextlib.contextmanager
def mocked_stack() -> Iterator[dict[str, str]]:
    """moto in-process with the template's resources; yields the environment the template gives the API."""
    import os

    import boto3
    from moto import mock_aws

    from twopass.aws import reset_clients
    from twopass.local.provision import provision

    os.environ.pop("AWS_ENDPOINT_URL", None)
    reset_clients()
    with mock_aws():
        env = dict(provision(lambda service: boto3.client(service, region_name="us-east-1")).api_env)
        env.update(POWERTOOLS_TRACE_DISABLED="true", TWOPASS_PROVIDERS="cpu")
        with patched_env(env):
            try:
                yield env
            finally:
                reset_clients()


def tagger(queue_urls: frozenset[str]) -> Any:
    """``chore`` for calls that time or start-up cause, ``job`` for those jobs cause."""

    def tag(service: str, operation: str, params: Mapping[str, Any]) -> str:
        if operation in _CHORE_OPERATIONS:
            return "chore"
        key = params.get("Key") or {}
        if service == "DynamoDB" and key.get("job_id", {}).get("S") == _WORKERS_KEY:
            return "chore"
        if service == "SQS" and params.get("QueueUrl") not in queue_urls:
            return "chore"  # a dead-letter queue: the sweep
        return "job"

    return tag


def _wait_final(table: str, job_ids: list[str], timeout: float) -> None:
    import boto3

    # A client of its own, not made by twopass.aws: the polling is not counted.
    db = boto3.client("dynamodb", region_name="us-east-1")
    pending = set(job_ids)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                item = db.get_item(TableName=table, Key={"job_id": {"S": job_id}}).get("Item") or {}
            except RuntimeError:  # moto's in-process table, read while a worker thread updates the item
                continue
            if item.get("status", {}).get("S") in ("succeeded", "failed"):
                pending.discard(job_id)
        time.sleep(0.05)
    if pending:
        raise TimeoutError(f"{len(pending)} job(s) not final after {timeout} s")


def _item(table: str, job_id: str) -> dict[str, Any]:
    import boto3

    out: dict[str, Any] = boto3.client("dynamodb", region_name="us-east-1").get_item(
        TableName=table, Key={"job_id": {"S": job_id}}
    )["Item"]
    return out


def item_bytes(item: Mapping[str, Any]) -> int:
    """DynamoDB's size of an item (attribute names + values, its sizing rules, approximately)."""
    return sum(len(name.encode()) + _value_bytes(value) for name, value in item.items())


def _value_bytes(value: Mapping[str, Any]) -> int:
    ((kind, v),) = value.items()
    if kind == "S":
        return len(str(v).encode())
    if kind == "N":
        return (len(str(v).lstrip("-").replace(".", "")) + 1) // 2 + 1
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + _value_bytes(x) + 1 for k, x in v.items())
    if kind == "L":
        return 3 + sum(_value_bytes(x) + 1 for x in v)
    return len(str(v))


def one_batch_size(batch_size: int, jobs: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from bench.counting import CallCounter
    from twopass.api.app import create_app
    from twopass.api.services.service import TwopassService
    from twopass.config import Settings
    from twopass.worker.main import build_worker

    with mocked_stack() as env:
        settings = Settings.from_env().replace(max_batch_size=batch_size, poll_wait_seconds=1)
        queues = frozenset(v for k, v in env.items() if k.endswith("QUEUE_URL"))
        counter = CallCounter(tagger=tagger(queues)).install()
        try:
            client = TestClient(create_app(TwopassService.from_settings(settings)))
            image = cat_jpeg()
            job_ids = []
            for _ in range(jobs):
                response = client.post("/predict", content=image, headers={"content-type": "image/jpeg"})
                if response.status_code != 200:
                    raise RuntimeError(f"POST /predict answered {response.status_code}: {response.text}")
                job_ids.append(response.json()["job_id"])
            created = _item(settings.table_name, job_ids[0])
            api = dict(counter.by_tag("job"))
            api_entries = dict(counter.entries)
            api_chores = dict(counter.by_tag("chore"))
            api_bytes = counter.message_bytes
            counter.reset()

            worker = build_worker(settings)
            thread = threading.Thread(target=worker.run, daemon=True)
            started = time.perf_counter()
            thread.start()
            _wait_final(settings.table_name, job_ids, timeout=60 + jobs)
            drained = time.perf_counter() - started
            worker.stop()
            thread.join(timeout=30)
            # Receivers are not waited for at shutdown: let the polls in flight come back, so each is
            # counted with its answer (an empty one) rather than as a call that brought messages.
            time.sleep(settings.poll_wait_seconds + 0.5)
            work = dict(counter.by_tag("job"))
            work_entries = dict(counter.entries)
            empty = counter.empty_by_tag.get("job", 0)
            if empty:  # polls that found the queue drained: time, not jobs, causes them
                work[("SQS", "ReceiveMessage")] = work.get(("SQS", "ReceiveMessage"), 0) - empty
            stats = worker.stats.summary()
        finally:
            counter.detach()
        item = _item(settings.table_name, job_ids[0])
    return {
        "batch_size": batch_size,
        "jobs": jobs,
        "api": _per_job(api, jobs),
        "api_other": {f"{s} {o}": n for (s, o), n in sorted(api_chores.items())},
        "worker": _per_job(work, jobs),
        "worker_empty_receives": empty,
        # Entries of batch calls per job (what EventBridge bills: one event an entry).
        "api_entries": _per_job(api_entries, jobs),
        "worker_entries": _per_job(work_entries, jobs),
        "worker_chores": {f"{s} {o}": n for (s, o), n in sorted(counter.by_tag("chore").items())},
        "batches": stats.get("batches"),
        "drain_seconds": round(drained, 2),
        "message_bytes_per_job": round(api_bytes / jobs),
        "item_bytes_created": item_bytes(created),
        "item_bytes_final": item_bytes(item),
    }


def _per_job(calls: Mapping[tuple[str, str], int], jobs: int) -> dict[str, float]:
    return {f"{s} {o}": round(n / jobs, 4) for (s, o), n in sorted(calls.items()) if n}


def idle_worker(seconds: float, scale: float) -> dict[str, Any]:
    """Calls an idle worker makes, with its periods divided by ``scale``; returned per real hour."""
    from bench.counting import CallCounter
    from twopass.config import Settings
    from twopass.worker.main import build_worker

    with mocked_stack() as env:
        base = Settings.from_env()
        settings = base.replace(
            poll_wait_seconds=max(1, round(base.poll_wait_seconds / scale)),
            heartbeat_seconds=base.heartbeat_seconds / scale,
            dlq_sweep_seconds=base.dlq_sweep_seconds / scale,
            reconcile_seconds=base.reconcile_seconds / scale,
        )
        queues = frozenset(v for k, v in env.items() if k.endswith("QUEUE_URL"))
        worker = build_worker(settings)
        with CallCounter.everywhere() as counter:
            counter.tagger = tagger(queues)
            thread = threading.Thread(target=worker.run, daemon=True)
            thread.start()
            time.sleep(seconds)
            snap = counter.snapshot()
            worker.stop()
            thread.join(timeout=30)
    factor = 3600 / (seconds * scale)
    return {
        "seconds": seconds,
        "time_scale": scale,
        "settings": {
            "poll_wait_seconds": base.poll_wait_seconds,
            "receivers": base.receivers,
            "heartbeat_seconds": base.heartbeat_seconds,
            "dlq_sweep_seconds": base.dlq_sweep_seconds,
            "reconcile_seconds": base.reconcile_seconds,
        },
        "per_hour": {f"{s} {o}": round(n * factor) for (s, o), n in sorted(snap.items())},
    }


def run(config: CallsConfig) -> dict[str, Any]:
    out: dict[str, Any] = {"config": {**config.__dict__, "batch_sizes": list(config.batch_sizes)}, "per_job": []}
    for size in config.batch_sizes:
        log(f"calls: {config.jobs} jobs through the API, then one worker at max_batch_size {size}")
        row = one_batch_size(size, config.jobs)
        out["per_job"].append(row)
        log(f"  api {row['api']}\n  worker {row['worker']}")
    log(f"calls: idle worker for {config.idle_seconds} s, periods / {config.time_scale}")
    out["idle_worker"] = idle_worker(config.idle_seconds, config.time_scale)
    log(f"  per hour {out['idle_worker']['per_hour']}")
    out["summary"] = [summarise(row) for row in out["per_job"]]
    return out


def summarise(row: Mapping[str, Any]) -> dict[str, Any]:
    """DynamoDB writes, reads and SQS requests per job (API and worker together) for one batch size."""
    from bench.counting import DYNAMODB_READS, DYNAMODB_WRITES

    both: dict[str, float] = {}
    for side in ("api", "worker"):
        for name, n in row[side].items():
            both[name] = both.get(name, 0.0) + n

    def total(service: str, ops: frozenset[str] | None = None) -> float:
        split = [(name.split(), n) for name, n in both.items()]
        picked = [n for (svc, op), n in split if svc == service and (ops is None or op in ops)]
        return round(sum(picked), 3)

    return {
        "batch_size": row["batch_size"],
        "dynamodb_writes": total("DynamoDB", DYNAMODB_WRITES),
        "dynamodb_reads": total("DynamoDB", DYNAMODB_READS),
        "sqs_requests": total("SQS"),
        "s3_requests": total("S3"),
        "all": round(sum(both.values()), 3),
    }


if __name__ == "__main__":
    import json
    import sys

    from bench.common import quiet_twopass_logs

    quiet_twopass_logs()
    sizes = tuple(int(x) for x in sys.argv[1].split(",")) if len(sys.argv) > 1 else (1, 8, 32)
    result = run(CallsConfig(batch_sizes=sizes))
    print(json.dumps(result["summary"], indent=1))
    print(json.dumps(result["idle_worker"], indent=1))
