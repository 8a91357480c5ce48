"""The worker's callbacks against hostile receivers on 127.0.0.1, through the local stack.

An endless answer leaves the worker's memory flat; receivers that trickle a byte a second hold
their own tries only, each cut at its deadline, while a healthy receiver gets its callback at once;
what is still being tried when the worker stops is counted in its log.
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import api, final, until
from tests.receivers import HostileReceiver
from twopass.local.stack import LocalStack
from twopass.notify import SIGNATURE_HEADER, verify

pytestmark = pytest.mark.e2e

MB = 2**20
#: The sender's deadline for one try (``CallbackSender``'s default, which the worker uses).
TRY_SECONDS = 10.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def post_job(client: httpx.Client, image: bytes, callback_url: str) -> str:
    response = client.post(
        "/predict", json={"image_data": base64.b64encode(image).decode(), "callback_url": callback_url}
    )
    assert response.status_code == 200, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def worker_records(stack: LocalStack) -> list[dict[str, Any]]:
    assert stack.log_dir is not None
    out = []
    for line in (stack.log_dir / "worker-0.log").read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def test_an_endless_answer_leaves_the_worker_memory_flat(
    stack: LocalStack, cat_jpeg: bytes, record_property: Any
) -> None:
    pid = stack.procs["worker-0"].pid
    with HostileReceiver("endless", rate=40 * MB) as receiver, api(stack) as client:
        job_id = post_job(client, cat_jpeg, receiver.url)
        until(lambda: receiver.connections, 60, "the callback connecting", every=0.01)
        baseline = peak = rss_mb(pid)
        watch_until = time.monotonic() + 5  # 200 MB offered meanwhile
        while time.monotonic() < watch_until:
            peak = max(peak, rss_mb(pid))
            time.sleep(0.05)
        conn = receiver.connections[0]
        sent = receiver.sent
    record_property("worker_rss_growth_mb", round(peak - baseline, 1))  # in --junitxml reports
    assert peak - baseline < 30, f"worker RSS grew {peak - baseline:.0f} MB"
    assert conn.closed_at is not None and conn.closed_at - conn.opened_at < 1.0  # hung up after the head
    assert sent < 16 * MB
    assert len(receiver.connections) == 1  # a 2xx status line is a delivery: no retries
    request = conn.request
    assert request is not None and json.loads(request.body)["job_id"] == job_id
    assert verify(stack.callback_secret, request.body, request.head[SIGNATURE_HEADER.lower()])


def test_trickling_receivers_hold_only_their_own_tries(
    stack: LocalStack, cat_jpeg: bytes, record_property: Any
) -> None:
    """Five callbacks to four receivers sending a byte a second, then one to a healthy receiver."""
    hostile = [HostileReceiver("trickle", interval=1.0) for _ in range(4)]
    healthy = HostileReceiver("healthy")
    for receiver in (*hostile, healthy):
        receiver.__enter__()
    try:
        with api(stack) as client:
            hostile_jobs = {post_job(client, cat_jpeg, r.url) for r in (hostile[0], *hostile)}
            until(lambda: sum(r.open_connections for r in hostile) == 5, 90, "five trickling connections")

            job_id = post_job(client, cat_jpeg, healthy.url)
            until(lambda: healthy.requests, 60, "the healthy callback")
            finished_at = epoch(final(client, job_id)["finished_at"])
            delay = healthy.requests[0].at - finished_at
            record_property("healthy_callback_delay_s", round(delay, 3))
            assert delay < 2.0, f"the healthy callback came {delay:.2f} s after its job ended"
            assert json.loads(healthy.requests[0].body)["job_id"] == job_id

            # Each first try ends at its deadline, a byte a second notwithstanding; then comes the retry.
            def first_tries() -> list[float] | None:
                conns = [c for r in hostile for c in r.connections[: 2 if r is hostile[0] else 1]]
                held = [c.closed_at - c.opened_at for c in conns if c.closed_at is not None]
                return held if len(held) == 5 else None

            held = until(first_tries, TRY_SECONDS + 10, "the first tries ending")
            assert all(TRY_SECONDS - 0.5 < h < TRY_SECONDS + 2 for h in held), held
            until(lambda: sum(r.open_connections for r in hostile) == 5, 10, "five second tries")

        # The worker stops while the five second tries trickle: they are counted, not lost silently.
        stack.stop_workers(["worker-0"])
        records = worker_records(stack)
    finally:
        for receiver in (*hostile, healthy):
            receiver.__exit__()
        if not stack.alive().get("worker-0"):
            stack.start_worker("worker-0")
    summary = [r["message"] for r in records if "not delivered at shutdown" in str(r.get("message"))]
    assert summary, "no shutdown count in the worker's log"
    assert re.match(r"5 callback\(s\) not delivered at shutdown: 0 queued, 5 still being tried", summary[-1])
    dropped = {r.get("job_id") for r in records if "dropped at shutdown" in str(r.get("message"))}
    assert dropped == hostile_jobs

    with api(stack) as client:  # the restarted worker serves the next tests
        job_id = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}).json()["job_id"]
        assert final(client, job_id)["status"] == "succeeded"
