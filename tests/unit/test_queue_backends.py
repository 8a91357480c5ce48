"""The SQS backend, the payload store and the worker's leases: errors in twopass's hierarchy, clients
passed in, undecodable messages kept out of the worker, claim checks in one place.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from moto import mock_aws

from twopass.exceptions import (
    DependencyError,
    EnqueueError,
    InvalidImageError,
    MessageFormatError,
    MissingObjectError,
    TwopassError,
)
from twopass.payloads import PREFIX, PayloadStore
from twopass.queue.base import Delivery, JobMessage
from twopass.queue.memory import MemoryQueue
from twopass.queue.sqs import SqsPublisher, SqsSource
from twopass.worker.leases import Leases


@pytest.fixture
def aws_mock() -> Iterator[None]:
    with mock_aws():
        yield


def sqs(region: str = "us-east-1") -> Any:
    return boto3.client("sqs", region_name=region)


def unreachable(service: str) -> Any:
    """A client whose endpoint refuses connections at once, without retries."""
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1),
    )


def queue_with_dlq(client: Any, max_receive_count: int = 2) -> tuple[str, str]:
    dlq = client.create_queue(QueueName="jobs-dlq")["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receive_count)})
    url = client.create_queue(QueueName="jobs", Attributes={"RedrivePolicy": policy})["QueueUrl"]
    return url, dlq


# -- SQS ----------------------------------------------------------------------------------------


def test_undecodable_messages_never_reach_the_worker_and_end_in_the_dlq(aws_mock: None) -> None:
    client = sqs()
    url, dlq = queue_with_dlq(client, max_receive_count=2)
    # Visibility 0: each receive sees the messages again at once, as after their visibility timeout.
    source = SqsSource(url, visibility_timeout=0, client=client)
    assert source.max_receive_count == 2
    client.send_message(QueueUrl=url, MessageBody="not json at all")
    client.send_message(QueueUrl=url, MessageBody=json.dumps({"v": 99, "job_id": "x"}))
    good = JobMessage(job_id="a" * 32, image=b"img")
    client.send_message(QueueUrl=url, MessageBody=good.encode())
    for attempt in (1, 2):
        deliveries = source.receive(10, 0)
        assert [d.message for d in deliveries] == [good]
        assert deliveries[0].receive_count == attempt
    assert source.receive(10, 0) == []  # moved on their third receive
    dead = client.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in dead) == sorted(
        ["not json at all", json.dumps({"v": 99, "job_id": "x"}), good.encode()]
    )


def test_ack_release_and_extend_act_on_the_received_messages(aws_mock: None) -> None:
    client = sqs()
    url, _ = queue_with_dlq(client, max_receive_count=5)
    source = SqsSource(url, visibility_timeout=60, client=client)
    publisher = SqsPublisher(url, client=client)
    for i in range(3):
        publisher.publish(JobMessage(job_id=f"{i:032x}", image=b"img"))
    first = source.receive(10, 0)
    assert len(first) == 3 and source.receive(10, 0) == []  # all hidden for 60 s
    assert source.ack(first[:1]) == []
    source.release(first[1:2])
    source.extend(first[2:], 120)
    (again,) = source.receive(10, 0)
    assert again.message == first[1].message and again.receive_count == 2
    assert publisher.ping() == {"visible": 0, "in_flight": 2}


def test_an_injected_client_is_the_one_used(aws_mock: None) -> None:
    # The queue exists only in eu-west-1; the environment's region (us-east-1) has none.
    client = sqs("eu-west-1")
    url = client.create_queue(QueueName="elsewhere")["QueueUrl"]
    SqsPublisher(url, client=client).publish(JobMessage(job_id="b" * 32, image=b"img"))
    (delivery,) = SqsSource(url, client=client).receive(10, 0)
    assert delivery.message.job_id == "b" * 32


def test_sqs_failures_are_twopass_errors() -> None:
    url = "http://127.0.0.1:9/123456789012/jobs"
    with pytest.raises(DependencyError) as created:
        SqsSource(url, client=unreachable("sqs"))
    with pytest.raises(EnqueueError) as published:
        SqsPublisher(url, client=unreachable("sqs")).publish(JobMessage(job_id="c" * 32, image=b"img"))
    with pytest.raises(DependencyError) as pinged:
        SqsPublisher(url, client=unreachable("sqs")).ping()
    for raised in (created, published, pinged):
        assert not isinstance(raised.value, ClientError | BotoCoreError)
        assert isinstance(raised.value.__cause__, BotoCoreError)  # the original is kept for the logs
        assert "127.0.0.1" not in str(raised.value)  # botocore's text carries endpoint URLs


def test_calls_on_a_missing_queue_are_dependency_errors(aws_mock: None) -> None:
    client = sqs()
    url, _ = queue_with_dlq(client)
    source = SqsSource(url, client=client)
    client.delete_queue(QueueUrl=url)
    held = [Delivery("m", "receipt", 1, JobMessage(job_id="d" * 32, image=b"img"))]
    for call in (lambda: source.receive(10, 0), lambda: source.ack(held), lambda: source.release(held)):
        with pytest.raises(DependencyError):
            call()


def test_message_format_errors_are_twopass_errors() -> None:
    with pytest.raises(MessageFormatError) as raised:
        JobMessage.decode("{}")
    assert isinstance(raised.value, TwopassError)
    with pytest.raises(TwopassError):
        JobMessage(job_id="e" * 32)  # neither an image nor a reference


# -- payloads -----------------------------------------------------------------------------------


def test_claim_check_round_trip(aws_mock: None) -> None:
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="payloads-bucket")
    store = PayloadStore(s3)
    ref = store.put("payloads-bucket", "f" * 32, b"big image")
    assert ref == f"s3://payloads-bucket/{PREFIX}{'f' * 32}"
    assert store.image(JobMessage(job_id="f" * 32, image_ref=ref)) == b"big image"
    store.delete(ref)
    with pytest.raises(MissingObjectError):  # a bad job, not an outage
        store.fetch(ref)


def test_inline_images_need_no_bucket() -> None:
    # A client that would fail any call: an inline image never touches it.
    store = PayloadStore(unreachable("s3"))
    assert store.image(JobMessage(job_id="1" * 32, image=b"small")) == b"small"


def test_payload_failures_are_twopass_errors() -> None:
    store = PayloadStore(unreachable("s3"))
    ref = f"s3://payloads-bucket/{PREFIX}{'2' * 32}"
    for call in (lambda: store.fetch(ref), lambda: store.delete(ref), lambda: store.put("payloads-bucket", "j", b"x")):
        with pytest.raises(DependencyError) as raised:
            call()
        assert not isinstance(raised.value, ClientError | BotoCoreError)
    for bad in ("https://example.com/x", "s3://payloads-bucket/elsewhere/x", "s3:///payloads/x"):
        with pytest.raises(InvalidImageError):
            store.fetch(bad)


# -- leases -------------------------------------------------------------------------------------


class RecordingSource(MemoryQueue):
    def __init__(self) -> None:
        super().__init__(visibility=60)
        self.extended: list[list[str]] = []
        self.released: list[list[str]] = []
        self.delete_calls: list[int] = []

    def ack(self, deliveries: Sequence[Delivery]) -> list[Delivery]:
        self.delete_calls.append(len(deliveries))
        return super().ack(deliveries)

    def extend(self, deliveries: Sequence[Delivery], seconds: int) -> None:
        self.extended.append([d.message_id for d in deliveries])
        super().extend(deliveries, seconds)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        self.released.append([d.message_id for d in deliveries])
        super().release(deliveries)


def test_leases_extend_what_is_held_past_half_its_visibility_and_nothing_released() -> None:
    source = RecordingSource()
    for i in range(3):
        source.publish(JobMessage(job_id=f"{i:032x}", image=b"img"))
    old, other_old, fresh = source.receive(10, 0)
    leases = Leases(source, visibility_seconds=60)
    leases.hold([old, other_old, fresh])
    old.leased_at = other_old.leased_at = time.monotonic() - 31
    leases.release([other_old])
    leases.extend_due()
    assert source.extended == [[old.message_id]]
    assert old.leased_at > time.monotonic() - 1  # a new lease starts now
    leases.extend_due()
    assert len(source.extended) == 1  # nothing is due again yet
    leases.ack([old, fresh])
    old.leased_at = fresh.leased_at = time.monotonic() - 31
    leases.extend_due()
    assert len(source.extended) == 1  # acked: no longer held, never extended again
    assert source.released == [[other_old.message_id]]
    leases.flush()
    assert len(source) == 1  # the released one is back; the acked ones are gone


def test_acks_share_delete_calls_across_batches_and_none_waits_past_its_linger() -> None:
    source = RecordingSource()
    for i in range(20):
        source.publish(JobMessage(job_id=f"{i:032x}", image=b"img"))
    deliveries = source.receive(10, 0) + source.receive(10, 0)
    leases = Leases(source, visibility_seconds=60)
    leases.hold(deliveries)
    leases.ack(deliveries[:8])  # one batch of 8: waits for company
    assert source.delete_calls == []
    leases.ack(deliveries[8:16])  # the next one fills a call of ten; six wait
    assert source.delete_calls == [10]
    leases.flush(linger=60)  # not waited long enough
    assert source.delete_calls == [10]
    time.sleep(0.05)
    leases.flush(linger=0.01)
    assert source.delete_calls == [10, 6]
    leases.ack(deliveries[16:])
    leases.flush()  # shutdown: whatever waits goes now
    assert source.delete_calls == [10, 6, 4]
    assert len(source) == 0 and source.ping()["in_flight"] == 0
