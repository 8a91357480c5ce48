"""Job control over real HTTP against a local stack of its own, started with no worker: cancel, list,
retry and overload through the API, the SDK and the CLI, with workers started only when a test needs one.

The stack takes two API keys (two tenants) and claim-checks every image (a 1 KiB inline limit), so
every job stays retryable; its backlog limit is 50 with a depth cached for 0.2 s.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import CAT_LABELS
from tests.e2e.helpers import api, final, own_stack, queue_depth, until, workers_on_demand
from twopass.cli import main as cli
from twopass.client import Client
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = "key-a", "key-b"
MAX_BACKLOG = 50


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "job-control",
        api_key=f"{KEY_A},{KEY_B}",
        env={
            "TWOPASS_POLL_WAIT_SECONDS": "1",
            "TWOPASS_HEARTBEAT_SECONDS": "1",
            "TWOPASS_INLINE_IMAGE_BYTES": "1024",
            "TWOPASS_MAX_BACKLOG": str(MAX_BACKLOG),
            "TWOPASS_BACKLOG_CACHE_SECONDS": "0.2",
        },
    )


@pytest.fixture
def worker(stack: LocalStack) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Starts a worker when the test calls it; stops it (SIGTERM, it drains) when the test ends."""
    with workers_on_demand(stack) as start:
        yield start


def http(stack: LocalStack, key: str = KEY_A) -> httpx.Client:
    return api(stack, key)


def test_a_job_cancelled_while_queued_never_runs_once_a_worker_starts(
    stack: LocalStack, worker: Callable[[], subprocess.Popen[bytes]], cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        doomed = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"}).json()["job_id"]
        kept = client.get("/predict/test").json()["job_id"]
        with http(stack, KEY_B) as other:
            assert other.delete(f"/job/{doomed}").status_code == 404, "another tenant's job is unknown to it"
        cancelled = client.delete(f"/job/{doomed}")
        assert cancelled.status_code == 200
        assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
        worker()
        done = final(client, kept)
        assert done["status"] == "succeeded" and done[kept]["prediction"] in CAT_LABELS
        until(lambda: queue_depth(stack) == 0, 30, "the cancelled job's message deleted")
        never = client.get(f"/job/{doomed}").json()
        assert never["status"] == "cancelled" and never["attempts"] == 0 and never["started_at"] is None
        assert never["slow"] is None and never[doomed] == {"prediction": None}
        again = client.delete(f"/job/{doomed}")
        assert again.status_code == 409 and again.json()["error"] == "job_final"
        assert client.delete(f"/job/{kept}").json()["error"] == "job_final", "a finished job is final too"


def test_lists_page_newest_first_filter_by_status_and_keep_tenants_apart(stack: LocalStack) -> None:
    with http(stack, KEY_A) as a, http(stack, KEY_B) as b:
        mine = [a.get("/predict/test").json()["job_id"] for _ in range(5)]
        theirs = [b.get("/predict/test").json()["job_id"] for _ in range(2)]
        for job_id in mine[1::2]:
            assert a.delete(f"/job/{job_id}").status_code == 200
        pages: list[list[str]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 2, "status": "queued"}
            if cursor:
                params["cursor"] = cursor
            page = a.get("/jobs", params=params).json()
            pages.append([job["job_id"] for job in page["jobs"]])
            assert all(job["status"] == "queued" for job in page["jobs"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        queued_mine = [job_id for job_id in mine[::-1] if job_id not in mine[1::2]]
        seen = [job_id for page in pages for job_id in page]
        assert seen[: len(queued_mine)] == queued_mine, "newest first"
        assert len(pages) >= 2 and not set(seen) & set(theirs)
        newest = a.get("/jobs", params={"limit": 2}).json()
        assert [j["job_id"] for j in newest["jobs"]] == mine[:2:-1] and newest["next_cursor"]
        cancelled = a.get("/jobs", params={"status": "cancelled", "limit": 100}).json()["jobs"]
        assert {j["job_id"] for j in cancelled} >= set(mine[1::2]) and not set(theirs) & {
            j["job_id"] for j in cancelled
        }
        listed_b = b.get("/jobs", params={"limit": 100}).json()
        assert [j["job_id"] for j in listed_b["jobs"]] == theirs[::-1] and listed_b["next_cursor"] is None
        # A cursor is bound to the caller it was handed to: in another tenant's hands it is refused.
        crossed = b.get("/jobs", params={"cursor": newest["next_cursor"]})
        assert crossed.status_code == 400 and crossed.json()["error"] == "invalid_cursor"
        assert a.get("/jobs", params={"cursor": newest["next_cursor"]}).status_code == 200
        bad = a.get("/jobs", params={"cursor": "garbage!"})
        assert bad.status_code == 400 and bad.json() == {"error": "invalid_cursor", "detail": bad.json()["detail"]}
        assert a.get("/jobs", params={"limit": 101}).status_code == 422


def test_retry_after_a_failure_succeeds_under_the_same_id(
    stack: LocalStack, worker: Callable[[], subprocess.Popen[bytes]], cat_jpeg: bytes
) -> None:
    s3, bucket = stack.client("s3"), stack.resources["PayloadBucket"]
    with http(stack) as client:
        job_id = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"}).json()["job_id"]
        key = f"payloads/{job_id}"
        s3.head_object(Bucket=bucket, Key=key)  # claim-checked, as the stack is set up to
        # The worker will find garbage where the image was: a real failure of the slow pass.
        s3.put_object(Bucket=bucket, Key=key, Body=b"this is not an image")
        refused = client.post(f"/job/{job_id}/retry")
        assert refused.status_code == 409 and refused.json()["error"] == "job_not_retryable", "queued: nothing to retry"
        worker()
        failed = final(client, job_id)
        assert failed["status"] == "failed" and "invalid image" in failed["error"]
        s3.put_object(Bucket=bucket, Key=key, Body=cat_jpeg)  # the fix
        with http(stack, KEY_B) as other:
            assert other.post(f"/job/{job_id}/retry").status_code == 404
        retried = client.post(f"/job/{job_id}/retry")
        assert retried.status_code == 200, retried.text
        body = retried.json()
        assert body["job_id"] == job_id and body["status"] in ("queued", "running", "succeeded")
        assert [h["status"] for h in body["history"]] == ["failed"] and "invalid image" in body["history"][0]["error"]
        done = final(client, job_id)
        assert done["status"] == "succeeded" and done[job_id]["prediction"] in CAT_LABELS
        assert done["attempts"] == failed["attempts"] + 1, "attempts carry on"
        assert done["error"] is None and len(done["history"]) == 1
        twice = client.post(f"/job/{job_id}/retry")
        assert twice.status_code == 409 and twice.json()["error"] == "job_not_retryable", "a success is never rerun"


def test_retry_of_a_job_whose_image_is_gone_is_410(stack: LocalStack, cat_jpeg: bytes) -> None:
    with http(stack) as client:
        job_id = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"}).json()["job_id"]
        assert client.delete(f"/job/{job_id}").status_code == 200
        stack.client("s3").delete_object(Bucket=stack.resources["PayloadBucket"], Key=f"payloads/{job_id}")
        gone = client.post(f"/job/{job_id}/retry")
        assert gone.status_code == 410 and gone.json()["error"] == "image_gone"
        assert client.get(f"/job/{job_id}").json()["status"] == "cancelled"


def test_overload_sheds_with_the_fast_answer_kept_and_reject_gets_429(stack: LocalStack, cat_jpeg: bytes) -> None:
    sqs = stack.client("sqs")
    # The backlog counts both queues; the high-priority one is filled so the jobs of other tests stay.
    high = stack.resources["HighPriorityJobsQueue"]
    for start in range(0, MAX_BACKLOG, 10):
        entries = [{"Id": str(i), "MessageBody": f"filler {start + i}"} for i in range(10)]
        sqs.send_message_batch(QueueUrl=high, Entries=entries)
    try:
        time.sleep(0.3)  # past the API's cached depth
        with http(stack) as client:
            before = {j["job_id"] for j in client.get("/jobs", params={"limit": 100}).json()["jobs"]}
            shed = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"})
            assert shed.status_code == 200
            body = shed.json()
            assert body["job_id"] is None and body["status"] == "shed"
            assert body["efficientnet-lite0"] in CAT_LABELS and body["fast"]["label"] == body["efficientnet-lite0"]
            rejected = client.post(
                "/predict",
                content=cat_jpeg,
                headers={"content-type": "image/jpeg"},
                params={"on_overload": "reject"},
            )
            assert rejected.status_code == 429 and rejected.json()["error"] == "overloaded"
            assert int(rejected.headers["retry-after"]) >= 1
            after = {j["job_id"] for j in client.get("/jobs", params={"limit": 100}).json()["jobs"]}
            assert after == before, "neither request created a job"
    finally:
        sqs.purge_queue(QueueUrl=high)
    with http(stack) as client:
        accepted = until(lambda: client.get("/predict/test").json().get("job_id"), 10, "jobs accepted again")
        assert client.get(f"/job/{accepted}").json()["status"] in ("queued", "running", "succeeded")


def test_sdk_and_cli_cancel_list_and_retry(stack: LocalStack, capsys: pytest.CaptureFixture[str], photo: Any) -> None:
    options = ["--url", stack.api_url, "--api-key", KEY_B]
    with Client(stack.api_url, api_key=KEY_B) as tp:
        first = tp.predict(photo("coffee.jpg"), deadline_seconds=600, priority="high")
        second = tp.predict(photo("astronaut.jpg"))
        assert first.job_id and second.job_id
        assert tp.cancel(first).cancelled
        listed = [job for page in tp.jobs(limit=1) for job in page]
        assert [job.job_id for job in listed[:2]] == [second.job_id, first.job_id]
        assert listed[1].deadline_at is not None
        cancelled = [job.job_id for page in tp.jobs("cancelled") for job in page]
        assert first.job_id in cancelled and second.job_id not in cancelled

    assert cli(["cancel", second.job_id, first.job_id, *options]) == 1, "one of them had already ended"
    out, err = capsys.readouterr()
    assert out.split() == [second.job_id, "cancelled"] and "already ended" in err

    assert cli(["jobs", "--status", "cancelled", "--limit", "1", *options]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "STATUS", "PRIORITY", "CREATED", "SLOW"] and len(lines) == 2
    assert lines[1].split()[:2] == [second.job_id, "cancelled"] and "there are more" in err

    assert cli(["jobs", "--json", "--all", *options]) == 0
    listed_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {first.job_id, second.job_id} <= {j["job_id"] for j in listed_json}

    assert cli(["retry", first.job_id, "--json", *options]) == 0
    retried = json.loads(capsys.readouterr().out)
    assert retried["status"] in ("queued", "running", "succeeded") and retried["history"][0]["status"] == "cancelled"
    assert cli(["job", first.job_id, *options]) == 0, "queued again: no worker runs in this test"
    shown = capsys.readouterr().out
    assert f"job       {first.job_id}" in shown and "priority  high" in shown and "earlier   cancelled" in shown
