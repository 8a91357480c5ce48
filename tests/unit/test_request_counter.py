"""The AWS call counter: real boto3 calls against moto, counted from botocore's events."""

from __future__ import annotations

import boto3
from fastapi.testclient import TestClient

from bench.counting import DYNAMODB_WRITES, CallCounter, diff
from twopass import aws as twopass_aws
from twopass.api.app import create_app
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.jobs.base import JobRecord, new_job_id
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.runtime import Classifier
from twopass.queue.base import JobMessage
from twopass.queue.sqs import SqsPublisher, SqsSource


def test_attached_client_counts_each_call_by_service_and_operation(aws: Settings) -> None:
    db = boto3.client("dynamodb", region_name="us-east-1")
    counter = CallCounter().attach(db)
    store = DynamoJobStore(aws.table_name, client=db)
    ids = [new_job_id() for _ in range(3)]
    for job_id in ids:
        store.create(JobRecord(job_id=job_id))
    store.get(ids[0])
    assert counter.snapshot() == {("DynamoDB", "PutItem"): 3, ("DynamoDB", "GetItem"): 1}
    assert counter.total("DynamoDB", DYNAMODB_WRITES) == 3
    assert counter.per_job(3) == {"DynamoDB GetItem": 1 / 3, "DynamoDB PutItem": 1.0}

    counter.detach()
    store.get(ids[1])
    assert counter.total() == 4, "nothing is counted once detached"


def test_installed_counter_sees_clients_made_before_and_after(aws: Settings) -> None:
    made_before = twopass_aws.client("sqs")
    with CallCounter.everywhere() as counter:
        SqsPublisher(aws.queue_url).publish(JobMessage(job_id=new_job_id(), image=b"x" * 100))
        made_after = twopass_aws.client("dynamodb", twopass_aws.CallBudget(read_timeout=5.0))
        made_after.describe_table(TableName=aws.table_name)
        snap = counter.snapshot()
    assert snap == {("SQS", "SendMessage"): 1, ("DynamoDB", "DescribeTable"): 1}
    assert counter.message_bytes > 100  # the image in base64, the JSON around it
    made_before.get_queue_attributes(QueueUrl=aws.queue_url, AttributeNames=["All"])
    made_after.describe_table(TableName=aws.table_name)
    assert counter.snapshot() == snap, "uninstalled at the end of the block"


def test_receives_count_messages_empty_polls_and_batch_entries(aws: Settings) -> None:
    publisher = SqsPublisher(aws.queue_url)
    for _ in range(12):
        publisher.publish(JobMessage(job_id=new_job_id(), image=b"img"))
    with CallCounter.everywhere() as counter:
        source = SqsSource(aws.queue_url)
        got = source.receive(10, 0) + source.receive(10, 0)
        source.ack(got)
        assert source.receive(10, 0) == []
    assert len(got) == 12
    assert counter.received == 12 and counter.empty_receives == 1
    calls = counter.snapshot()
    assert calls[("SQS", "ReceiveMessage")] == 3
    assert calls[("SQS", "DeleteMessageBatch")] == 2  # ten entries a call at most
    assert counter.entries[("SQS", "DeleteMessageBatch")] == 12


def test_predict_makes_one_table_write_and_one_send(
    aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes
) -> None:
    """The API's whole AWS budget per job, measured through HTTP: nothing per request beyond these two."""
    service = TwopassService.from_settings(aws)
    service.__dict__["classifier"] = fast_classifier
    client = TestClient(create_app(service))
    client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"})  # warm
    with CallCounter.everywhere() as counter:
        for _ in range(5):
            response = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"})
            assert response.status_code == 200, response.text
    assert counter.snapshot() == {("DynamoDB", "PutItem"): 5, ("SQS", "SendMessage"): 5}


def test_diff_keeps_what_changed() -> None:
    before = {("SQS", "SendMessage"): 2, ("DynamoDB", "PutItem"): 1}
    after = {("SQS", "SendMessage"): 5, ("DynamoDB", "PutItem"): 1, ("S3", "PutObject"): 1}
    assert diff(after, before) == {("SQS", "SendMessage"): 3, ("S3", "PutObject"): 1}
