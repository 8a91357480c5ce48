"""Batches and completion events over real HTTP, against a local stack of its own (moto server).

A batch of 100 with 3 bad items gives 97 jobs and 3 item errors (no 5xx) and ends with every slow
label; each final state (succeeded, failed, cancelled, expired) arrives as an EventBridge event
through the template's example rule, read from its queue as a subscriber would. The stack
claim-checks every image (a 1 KiB inline limit) so a job's image can be spoiled to make it fail.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import CAT_LABELS
from tests.e2e.helpers import api, own_stack, until, workers_on_demand
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e

KEY = "key-a"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "batch",
        api_key=KEY,
        env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "1", "TWOPASS_INLINE_IMAGE_BYTES": "1024"},
    )


@pytest.fixture
def worker(stack: LocalStack) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    with workers_on_demand(stack) as start:
        yield start


def http(stack: LocalStack) -> httpx.Client:
    return api(stack, KEY, timeout=60)


def thumbnail(jpeg: bytes, size: int) -> str:
    image = Image.open(io.BytesIO(jpeg)).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return base64.b64encode(out.getvalue()).decode()


def events(stack: LocalStack, seen: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Drain the example rule's queue into ``seen`` (job id → event); returns it."""
    sqs = stack.client("sqs")
    url = stack.outputs["JobEventsQueueUrl"]
    while True:
        out = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
        messages = out.get("Messages", [])
        if not messages:
            return seen
        for message in messages:
            event = json.loads(message["Body"])
            seen[event["detail"]["job_id"]] = event
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_a_batch_of_100_with_3_bad_items_and_an_event_for_every_final_state(
    stack: LocalStack, worker: Callable[[], subprocess.Popen[bytes]], photo: Callable[[str], bytes]
) -> None:
    photos = [thumbnail(photo(name), 200) for name in ("chelsea.jpg", "coffee.jpg", "astronaut.jpg")]
    items: list[dict[str, str]] = [{"image_data": photos[i % 3]} for i in range(100)]
    bad = {10: "invalid_base64", 50: "invalid_image", 90: "invalid_item"}
    items[10] = {"image_data": "this is not base64 at all!"}
    items[50] = {"image_data": base64.b64encode(b"\x89PNG but truncated").decode()}
    items[90] = {"picture": photos[0]}
    s3, bucket = stack.client("s3"), stack.resources["PayloadBucket"]
    with http(stack) as client:
        response = client.post("/batches", json={"items": items})
        assert response.status_code == 200, response.text
        body = response.json()
        answers = body["items"]
        assert [a["index"] for a in answers] == list(range(100))
        assert {a["index"]: a["error"] for a in answers if "error" in a} == bad
        jobs = [a for a in answers if "job_id" in a]
        assert len(jobs) == 97 and all(a["status"] in ("queued", "succeeded") for a in jobs)

        # One job of each other final state, before any worker runs.
        def submit(**fields: Any) -> str:
            answer = client.post("/predict", json={"image_data": photos[0], **fields})
            assert answer.status_code == 200, answer.text
            return str(answer.json()["job_id"])

        cancelled = submit()
        assert client.delete(f"/job/{cancelled}").json()["status"] == "cancelled"
        failing = submit(slow="always")
        s3.put_object(Bucket=bucket, Key=f"payloads/{failing}", Body=b"this is not an image")
        expiring = submit(slow="always", deadline_seconds=1)
        time.sleep(1.5)
        worker()

        def batch_done() -> dict[str, Any] | None:
            answer = client.get(f"/batches/{body['batch_id']}")
            if answer.status_code == 503:  # 100 job reads past the API's deadline on a busy machine: ask again
                assert answer.headers["Retry-After"], answer.text
                return None
            assert answer.status_code == 200, answer.text
            state: dict[str, Any] = answer.json()
            return state if state["done"] else None

        state = until(batch_done, 300, "the batch's 97 jobs")
        assert state["total"] == 100 and state["counts"]["succeeded"] == 97 and state["counts"]["refused"] == 3
        for item in state["items"]:
            if item["index"] in bad:
                assert item["error"] == bad[item["index"]]
            else:
                assert item["status"] == "succeeded" and item["slow"]["label"], item
                assert item[item["job_id"]]["prediction"] == item["slow"]["label"]

        def final(job_id: str) -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/job/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled", "expired") else None

        assert until(lambda: final(failing), 120, "the failing job")["status"] == "failed"
        assert until(lambda: final(expiring), 120, "the late job")["status"] == "expired"

    wanted = {job["job_id"] for job in jobs} | {cancelled, failing, expiring}
    seen: dict[str, dict[str, Any]] = {}
    until(lambda: wanted <= set(events(stack, seen)), 60, "an event for every job")
    assert seen[cancelled]["detail-type"] == "Job Cancelled" and seen[cancelled]["detail"]["status"] == "cancelled"
    # The id consumers de-duplicate on: job, run, attempts (never started), final state.
    assert seen[cancelled]["detail"]["event_id"] == f"{cancelled}-0-0-cancelled"
    assert seen[failing]["detail-type"] == "Job Failed" and "invalid image" in seen[failing]["detail"]["error"]
    assert seen[expiring]["detail-type"] == "Job Expired" and seen[expiring]["detail"]["error"]
    for job in jobs:
        event = seen[job["job_id"]]
        assert event["source"] == "twopass" and event["detail-type"] == "Job Succeeded"
        detail = event["detail"]
        assert detail["batch_id"] == body["batch_id"] and detail["label"] and detail["top_k"]
        assert detail["owner"] and detail["status"] == "succeeded"


def test_upload_items_in_a_batch_reach_their_slow_labels(
    stack: LocalStack, worker: Callable[[], subprocess.Popen[bytes]], cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        ready = client.post("/uploads", json={"content_type": "image/jpeg"}).json()
        put = httpx.put(ready["url"], content=cat_jpeg, headers=ready["headers"], timeout=30)
        assert put.status_code == 200, put.text
        pending = client.post("/uploads", json={"content_type": "image/jpeg"}).json()
        items = [{"upload_id": ready["upload_id"]}, {"upload_id": pending["upload_id"]}, {"upload_id": "0" * 32}]
        response = client.post("/batches", json={"items": items})
        assert response.status_code == 200, response.text
        answers = response.json()["items"]
        assert [a.get("error") for a in answers] == [None, "upload_pending", "upload_not_found"]
        assert answers[0]["fast"]["label"] in CAT_LABELS
        worker()

        def done() -> dict[str, Any] | None:
            state: dict[str, Any] = client.get(f"/batches/{response.json()['batch_id']}").json()
            return state if state["done"] else None

        state = until(done, 120, "the upload's job")
        assert state["counts"]["succeeded"] == 1 and state["counts"]["refused"] == 2
        assert state["items"][0]["slow"]["label"] in CAT_LABELS
