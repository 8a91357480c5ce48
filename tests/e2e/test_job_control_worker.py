"""The worker's half of job control over real HTTP, on a local stack of its own started with no worker:
a job whose deadline passes before any worker runs ends ``expired`` (and can be retried), a job
cancelled while it runs has its result discarded, and with both queues loaded the high-priority jobs
finish first while normal ones still progress.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import CAT_LABELS
from tests.e2e.helpers import api, final, own_stack, queue_depth, until
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "job-control-worker",
        env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "1", "TWOPASS_LOG_FORMAT": "json"},
    )


@pytest.fixture
def worker(stack: LocalStack) -> Iterator[Callable[..., tuple[str, subprocess.Popen[bytes]]]]:
    """Starts a worker (with extra settings) when the test calls it; SIGTERM at the end of the test."""
    started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(**env: str) -> tuple[str, subprocess.Popen[bytes]]:
        name = f"worker-{len(started)}-{time.monotonic_ns()}"
        saved = dict(stack.env)
        stack.env.update(env)
        try:
            proc = stack.start_worker(name)
        finally:
            stack.env.clear()
            stack.env.update(saved)
        started.append((name, proc))
        return name, proc

    yield start
    for _, proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # in case a test left it stopped
    stack.stop_workers([name for name, _ in started])


def http(stack: LocalStack) -> httpx.Client:
    return api(stack)


def submit(client: httpx.Client, image: bytes, **fields: Any) -> dict[str, Any]:
    response = client.post("/predict", json={"image_data": base64.b64encode(image).decode(), **fields})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def worker_log(stack: LocalStack, name: str) -> list[dict[str, Any]]:
    assert stack.log_dir is not None
    records = []
    for line in (stack.log_dir / f"{name}.log").read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_a_job_whose_deadline_passes_before_any_worker_ends_expired_and_can_be_retried(
    stack: LocalStack, worker: Callable[..., tuple[str, subprocess.Popen[bytes]]], cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        job = submit(client, cat_jpeg, deadline_seconds=1)
        job_id = job["job_id"]
        shown = client.get(f"/job/{job_id}").json()
        assert shown["status"] == "queued" and shown["deadline_at"]
        in_time = submit(client, cat_jpeg, deadline_seconds=600)["job_id"]
        time.sleep(2)  # no worker: the deadline passes in the queue
        worker()
        expired = final(client, job_id, timeout=120)
        assert expired["status"] == "expired", expired
        assert "deadline" in (expired["error"] or "")
        assert expired["attempts"] == 0 and expired["started_at"] is None and expired["slow"] is None
        assert final(client, in_time, timeout=120)["status"] == "succeeded"
        until(lambda: queue_depth(stack, "JobsQueue") == 0, 30, "the expired job's message deleted")

        # Its inline image was kept by the worker, so it can still be run, now, under the same id.
        retried = client.post(f"/job/{job_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["status"] == "queued"
        done = final(client, job_id, timeout=120)
        assert done["status"] == "succeeded" and done[job_id]["prediction"] in CAT_LABELS
        assert [h["status"] for h in done["history"]] == ["expired"]


def test_a_job_cancelled_while_running_has_its_result_discarded(
    stack: LocalStack, worker: Callable[..., tuple[str, subprocess.Popen[bytes]]], cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        ids = [submit(client, cat_jpeg)["job_id"] for _ in range(24)]
        # Take every message once and let it go, as a worker that died would: the next worker gets
        # redeliveries, which it marks running before they go on the model (first deliveries of a
        # short batch are only written once, at the end, and never show "running").
        sqs, url = stack.client("sqs"), stack.resources["JobsQueue"]
        taken = 0
        while taken < len(ids):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=1, WaitTimeSeconds=1)
            taken += len(got.get("Messages", []))
        time.sleep(1.5)
        name, proc = worker(TWOPASS_MAX_BATCH_SIZE="8")

        cancelled: list[str] = []
        deadline = time.monotonic() + 120
        while not cancelled and time.monotonic() < deadline:
            if not client.get("/jobs", params={"status": "running", "limit": 100}).json()["jobs"]:
                time.sleep(0.02)
                continue
            proc.send_signal(signal.SIGSTOP)  # frozen between "marked running" and "result written"
            try:
                running = client.get("/jobs", params={"status": "running", "limit": 100}).json()["jobs"]
                for job in running:
                    answer = client.delete(f"/job/{job['job_id']}")
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["status"] == "cancelled"
                    cancelled.append(job["job_id"])
            finally:
                proc.send_signal(signal.SIGCONT)
        assert cancelled, "no job was seen running"

        for job_id in ids:
            body = final(client, job_id, timeout=120)
            if job_id in cancelled:
                assert body["status"] == "cancelled" and body["slow"] is None and body[job_id] == {"prediction": None}
            else:
                assert body["status"] == "succeeded"
        until(lambda: queue_depth(stack, "JobsQueue") == 0, 30, "every message deleted")
        # The worker ran those jobs and threw their results away: discarded, not failed, not duplicates.
        discarded = until(
            lambda: (
                {r["job_id"] for r in worker_log(stack, name) if "its result is discarded" in r.get("message", "")}
                >= set(cancelled)
            ),
            30,
            "the worker logging the discarded results",
        )
        assert discarded
        assert not [r for r in worker_log(stack, name) if r.get("job_id") in cancelled and r.get("status")]


def test_high_priority_jobs_finish_first_while_normal_ones_still_progress(
    stack: LocalStack, worker: Callable[..., tuple[str, subprocess.Popen[bytes]]], cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        normal = [submit(client, cat_jpeg)["job_id"] for _ in range(40)]
        high = [submit(client, cat_jpeg, priority="high")["job_id"] for _ in range(12)]
        assert client.get(f"/job/{high[0]}").json()["priority"] == "high"
        assert queue_depth(stack, "HighPriorityJobsQueue") == 12 and queue_depth(stack, "JobsQueue") == 40
        worker(TWOPASS_MAX_BATCH_SIZE="4", TWOPASS_RECEIVERS="1")
        highs = [final(client, job_id, timeout=120) for job_id in high]
        assert all(h["status"] == "succeeded" for h in highs)
        last_high = max(h["finished_at"] for h in highs)
        normals = [final(client, job_id, timeout=120) for job_id in normal]
        assert all(n["status"] == "succeeded" for n in normals)
        before = [n for n in normals if n["finished_at"] <= last_high]
        # Normal work kept its share while high-priority work went first: some normal jobs finished
        # among the high-priority ones (about one in four takes), far from the 40 a FIFO queue would
        # have run before the first high-priority job.
        assert 1 <= len(before) <= 16, len(before)
        first_normals = sorted(n["finished_at"] for n in normals)[:10]
        assert first_normals[0] < last_high
