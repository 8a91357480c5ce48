"""The cascade, agreement, the result cache and a shadow rollout over real HTTP, on a local stack of its own.

The stack is provisioned with CascadeThreshold=0.8 and ResultCache=true (template parameters, so the
template's plumbing is what is tested), and its worker runs the fp16 export of the slow model as a
shadow candidate. It starts with no worker, so that what reaches the queue can be counted; the worker
starts when the first test that needs one asks for it. (The canary's share over 200 jobs is counted
in tests/unit/test_rollout.py, with the in-process worker.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import final, own_stack, until
from tests.e2e.test_chaos import scan_jobs
from twopass.api.services.shortcuts import UNKNOWN_VERSION_SECONDS
from twopass.config import REPO_ROOT
from twopass.jobs.cache import CACHE_PREFIX
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e

THRESHOLD = 0.8  # the fast model's top-1 on coffee is 0.92, on chelsea 0.41, on astronaut 0.20 (its card)
CANDIDATE = REPO_ROOT / "layers" / "models" / "slow" / "efficientnet-lite2-fp16.onnx"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "cascade",
        parameters={"CascadeThreshold": str(THRESHOLD), "ResultCache": "true"},
        env={
            "TWOPASS_POLL_WAIT_SECONDS": "1",
            "TWOPASS_HEARTBEAT_SECONDS": "1",
            "TWOPASS_CANDIDATE_SLOW_MODEL": str(CANDIDATE),
            "TWOPASS_ROLLOUT_MODE": "shadow",
        },
    )


@pytest.fixture(scope="module")
def worker(stack: LocalStack) -> Iterator[subprocess.Popen[bytes]]:
    yield stack.start_worker("worker-cascade")
    stack.stop_workers(["worker-cascade"])


@pytest.fixture
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.api_url, headers={"x-api-key": stack.api_key or ""}, timeout=30) as client:
        yield client


def post(http: httpx.Client, image: bytes, slow: str | None = None) -> dict[str, Any]:
    url = "/predict" if slow is None else f"/predict?slow={slow}"
    response = http.post(url, content=image, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def queued(stack: LocalStack) -> int:
    sqs = stack.client("sqs")
    url = stack.service_env["TWOPASS_QUEUE_URL"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def cache_entries(stack: LocalStack) -> int:
    return sum(1 for job_id in scan_jobs(stack) if job_id.startswith(CACHE_PREFIX))


def stored(stack: LocalStack, job_id: str) -> dict[str, Any]:
    """The job's item as the table holds it (what GET /job leaves out included)."""
    from twopass.jobs.dynamo.codec import from_dynamo

    table = stack.service_env["TWOPASS_TABLE_NAME"]
    item = stack.client("dynamodb").get_item(TableName=table, Key={"job_id": {"S": job_id}})["Item"]
    return {k: from_dynamo(v) for k, v in item.items()}


def test_a_confident_photo_skips_the_queue_and_goes_through_it_under_always(
    stack: LocalStack, http: httpx.Client, photo: Any
) -> None:
    coffee = photo("coffee.jpg")
    before = queued(stack)
    confident = post(http, coffee)
    assert confident["status"] == "succeeded" and confident["answered_by"] == "fast"
    assert confident["efficientnet-lite0"] == "espresso"
    assert queued(stack) == before  # nothing was queued
    job = http.get(confident["status_url"]).json()
    assert job["status"] == "succeeded" and job["answered_by"] == "fast" and job["attempts"] == 0
    assert job[confident["job_id"]] == {"prediction": "espresso"} and job["model_version"] == "0.1.0-int8"

    forced = post(http, coffee, slow="always")
    assert forced["status"] == "queued" and "answered_by" not in forced
    assert queued(stack) == before + 1
    unsure = post(http, photo("chelsea.jpg"))  # fast top-1 0.41: under the threshold
    assert unsure["status"] == "queued"
    assert queued(stack) == before + 2

    only = post(http, coffee, slow="never")
    assert only["job_id"] is None and only["answered_by"] == "fast" and "status_url" not in only
    assert queued(stack) == before + 2


def test_every_slow_result_records_agreement_and_the_shadow_is_never_served(
    stack: LocalStack, http: httpx.Client, worker: subprocess.Popen[bytes], photo: Any
) -> None:
    # slow=always: past the cascade and the cache, so each gets a slow pass of its own.
    jobs = {
        "coffee": post(http, photo("coffee.jpg"), slow="always")["job_id"],  # espresso both: agree
        "chelsea": post(http, photo("chelsea.jpg"), slow="always")["job_id"],  # tiger cat vs Egyptian cat
        "astronaut": post(http, photo("astronaut.jpg"), slow="always")["job_id"],  # football helmet vs barbell
    }
    done = {name: final(http, job_id) for name, job_id in jobs.items()}
    for name, job in done.items():
        assert job["status"] == "succeeded" and job["answered_by"] == "slow", name
        assert isinstance(job["agreement"], bool), name
        assert job["model_version"] == "0.1.0-fp32" and job["cached"] is False
        assert "shadow" not in job and "shadow" not in job["slow"]  # never served
    assert done["coffee"]["agreement"] is True
    assert done["chelsea"]["agreement"] is False and done["astronaut"]["agreement"] is False
    # The shadow candidate ran on each and is recorded beside the served answer.
    for name, job_id in jobs.items():
        shadow = stored(stack, job_id)["result"]["shadow"]
        assert shadow["version"] == "0.1.0-fp16" and shadow["model"] == "efficientnet-lite2", name
        assert shadow["label"] == done[name]["slow"]["label"] and shadow["agreement"] is True


def test_a_repeated_image_is_served_from_the_cache_and_a_changed_byte_is_not(
    stack: LocalStack, http: httpx.Client, worker: subprocess.Popen[bytes], photo: Any
) -> None:
    chelsea = photo("chelsea.jpg") + b"cache-test"  # bytes after the JPEG's end: no other test sends these
    # The API learns the serving slow version from a worker's heartbeat and trusts "unknown" for a few
    # seconds: the cache is consulted once a worker has reported and that has passed.
    until(lambda: http.get("/health/all").json()["backends"]["worker"]["alive"], 60, "a worker's heartbeat")
    time.sleep(UNKNOWN_VERSION_SECONDS)
    entries = cache_entries(stack)
    first = post(http, chelsea)
    slow = final(http, first["job_id"])
    assert slow["status"] == "succeeded" and slow["cached"] is False
    # The worker fills the cache just after it writes the job final: a client that asks again at once
    # may be a moment early on a busy machine.
    until(lambda: cache_entries(stack) > entries, 30, "the result cached")

    again = post(http, chelsea)
    assert again["status"] == "succeeded" and again["cached"] is True and again["answered_by"] == "slow"
    assert again["job_id"] != first["job_id"]
    assert again["slow"]["label"] == slow["slow"]["label"] == "Egyptian cat"
    job = http.get(again["status_url"]).json()
    assert job["cached"] is True and job["agreement"] is False and job["attempts"] == 0
    assert "shadow" not in job["slow"]

    changed = post(http, chelsea + b"\0")  # one byte more: the same picture, another image to the cache
    assert changed["status"] == "queued" and "cached" not in changed
    assert final(http, changed["job_id"])["cached"] is False
