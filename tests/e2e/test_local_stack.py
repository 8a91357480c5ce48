"""End to end over real HTTP: API under uvicorn, SQS and DynamoDB in moto server, the worker process."""

from __future__ import annotations

import base64
import time
from typing import Any

import httpx
import pytest

from tests.conftest import CAT_LABELS
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e


def auth(stack: LocalStack) -> dict[str, str]:
    return {"x-api-key": stack.api_key or ""}


def poll_job(client: httpx.Client, job_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/job/{job_id}")
        assert response.status_code == 200
        data: dict[str, Any] = response.json()
        if data["status"] in ("succeeded", "failed"):
            return data
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {data}")


def test_cat_photo_fast_then_slow(stack: LocalStack, cat_jpeg: bytes) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=auth(stack)) as client:
        posted_at = time.monotonic()
        response = client.post("/predict", json={"image_data": base64.b64encode(cat_jpeg).decode()})
        assert response.status_code == 200
        fast = response.json()
        assert fast["efficientnet-lite0"] in CAT_LABELS
        job_id = fast["job_id"]
        done = poll_job(client, job_id)
        elapsed = time.monotonic() - posted_at
    assert done["status"] == "succeeded"
    assert done[job_id]["prediction"] in CAT_LABELS
    assert done["slow"]["model"] == "efficientnet-lite2"
    assert elapsed < 30


def test_predict_test_and_raw_body(stack: LocalStack, photo: Any) -> None:
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=auth(stack)) as client:
        test = client.get("/predict/test").json()
        assert test["efficientnet-lite0"] in CAT_LABELS
        raw = client.post("/predict", content=photo("coffee.jpg"), headers={"Content-Type": "image/jpeg"}).json()
        assert raw["efficientnet-lite0"] == "espresso"
        assert poll_job(client, raw["job_id"])[raw["job_id"]]["prediction"] == "espresso"
        assert poll_job(client, test["job_id"])["status"] == "succeeded"


def test_many_jobs_all_finish_exactly_once(stack: LocalStack, cat_jpeg: bytes, photo: Any) -> None:
    images = [cat_jpeg, photo("coffee.jpg"), photo("astronaut.jpg")] * 7
    with httpx.Client(base_url=stack.api_url, timeout=30, headers=auth(stack)) as client:
        ids = [
            client.post("/predict", content=img, headers={"Content-Type": "image/jpeg"}).json()["job_id"]
            for img in images
        ]
        results = [poll_job(client, job_id, timeout=60) for job_id in ids]
    assert all(r["status"] == "succeeded" and r["attempts"] >= 1 for r in results)
    assert len(set(ids)) == len(ids)


def test_health_all_sees_every_backend_and_the_worker(stack: LocalStack) -> None:
    deadline = time.monotonic() + 20
    while True:
        data = httpx.get(f"{stack.api_url}/health/all", timeout=10, headers=auth(stack)).json()
        if data["backends"]["worker"]["status"] == "ok" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert data["status"] == "ok"
    assert data["efficientnet-lite0"] == "ok" and data["efficientnet-lite2"] == "ok"
    assert data["backends"]["worker"]["alive"] == 1
    assert data["backends"]["worker"]["workers"][0]["model_sha256"]


def test_metadata_over_http(stack: LocalStack) -> None:
    data = httpx.get(f"{stack.api_url}/metadata", timeout=10, headers=auth(stack)).json()
    assert data["models"]["fast"]["sha256"] and data["models"]["slow"]["sha256"]


def test_resources_come_from_the_template_stack(stack: LocalStack) -> None:
    """The queue and table the API uses are the ones CloudFormation created from template.yaml."""
    cfn = stack.client("cloudformation")
    resources = {
        # moto leaves some resource types (the EventBridge bus) without a physical id.
        r["LogicalResourceId"]: r.get("PhysicalResourceId")
        for r in cfn.describe_stack_resources(StackName="twopass-local")["StackResources"]
    }
    assert stack.service_env["TWOPASS_QUEUE_URL"] == resources["JobsQueue"]
    assert stack.service_env["TWOPASS_TABLE_NAME"] == resources["JobsTable"]
    sqs = stack.client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=resources["JobsQueue"], AttributeNames=["RedrivePolicy"])["Attributes"]
    assert "JobsDeadLetterQueue" in attrs["RedrivePolicy"]


def test_api_key_is_enforced_like_api_gateway(stack: LocalStack) -> None:
    assert httpx.get(f"{stack.api_url}/health", timeout=10).status_code == 200  # open, like the template
    for headers in ({}, {"x-api-key": "wrong"}):
        response = httpx.get(f"{stack.api_url}/predict/test", headers=headers, timeout=10)
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
    assert httpx.get(f"{stack.api_url}/predict/test", headers=auth(stack), timeout=30).status_code == 200


def test_emulator_conditional_writes_are_atomic(stack: LocalStack) -> None:
    """Racing conditional updates of one item: exactly one wins, as on DynamoDB (plain moto lets
    several through, which would hide or fake double final writes)."""
    from concurrent.futures import ThreadPoolExecutor

    from botocore.exceptions import ClientError

    db = stack.client("dynamodb")
    table = stack.service_env["TWOPASS_TABLE_NAME"]
    db.put_item(TableName=table, Item={"job_id": {"S": "race"}, "status": {"S": "running"}})

    def finish(i: int) -> bool:
        try:
            db.update_item(
                TableName=table,
                Key={"job_id": {"S": "race"}},
                UpdateExpression="SET #s = :done, winner = :i ADD final_writes :one",
                ConditionExpression="#s = :running",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={
                    ":done": {"S": "succeeded"},
                    ":running": {"S": "running"},
                    ":i": {"N": str(i)},
                    ":one": {"N": "1"},
                },
            )
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False

    with ThreadPoolExecutor(16) as pool:
        wins = sum(pool.map(finish, range(64)))
    item = db.get_item(TableName=table, Key={"job_id": {"S": "race"}}, ConsistentRead=True)["Item"]
    assert wins == 1
    assert item["final_writes"]["N"] == "1"
