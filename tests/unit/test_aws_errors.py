"""The one translation of botocore errors, the one backoff helper."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from twopass.aws import translate_errors
from twopass.backoff import Backoff, retry
from twopass.exceptions import (
    ConditionFailedError,
    DependencyError,
    DependencyTimeoutError,
    MissingObjectError,
)


def client_error(code: str, **more: object) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "at https://internal.example:4566/"}, **more}, "Op")


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (client_error("ConditionalCheckFailedException"), ConditionFailedError),
        (client_error("TransactionCanceledException", CancellationReasons=[{"Code": "ConditionalCheckFailed"}]),
         ConditionFailedError),
        (client_error("TransactionCanceledException", CancellationReasons=[{"Code": "ThrottlingError"}]),
         DependencyError),
        (client_error("NoSuchKey"), MissingObjectError),
        (client_error("ProvisionedThroughputExceededException"), DependencyError),
        (ReadTimeoutError(endpoint_url="http://10.0.0.1:4566/"), DependencyTimeoutError),
    ],
)  # fmt: skip
def test_translation_maps_and_hides_endpoints(raised: Exception, expected: type[Exception]) -> None:
    with pytest.raises(expected) as caught, translate_errors("job table put_item"):
        raise raised
    assert "job table put_item" in str(caught.value)
    assert "http" not in str(caught.value)


def test_connection_refused_is_a_dependency_error_without_the_url() -> None:
    sqs = boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(connect_timeout=0.5, retries={"max_attempts": 1}),
    )
    with pytest.raises(DependencyError) as caught, translate_errors("queue attributes"):
        sqs.get_queue_attributes(QueueUrl="http://127.0.0.1:9/q", AttributeNames=["All"])
    assert "127.0.0.1" not in str(caught.value)


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(base=0.1, cap=0.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]
    backoff.reset()
    assert backoff.next_delay() == 0.1
    jittered = Backoff(base=1, cap=4, jitter=True)
    assert all(0 <= jittered.next_delay() <= 4 for _ in range(20))


def test_retry_stops_on_success_gives_up_and_honours_stop() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DependencyError("down")
        return "ok"

    assert retry(flaky, attempts=4, backoff=Backoff(base=0.001)) == "ok" and len(calls) == 3
    with pytest.raises(DependencyError):
        retry(lambda: (_ for _ in ()).throw(DependencyError("down")), attempts=2, backoff=Backoff(base=0.001))
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    with pytest.raises(DependencyError):
        retry(lambda: (_ for _ in ()).throw(DependencyError("down")), attempts=5, backoff=Backoff(base=10), stop=stop)
    assert time.monotonic() - started < 1  # a stop interrupts the wait at once
    with pytest.raises(ValueError, match="not retried"):
        retry(lambda: (_ for _ in ()).throw(ValueError("not retried")), attempts=3)
