"""Reading claim checks and uploads within a limit, pinned to the bytes a job was accepted with, and the
presigned POST whose policy has S3 cap an upload's size (in moto, against the template's bucket).

moto accepts a presigned POST over its ``content-length-range``, so the cap S3 applies is shown by the
policy the API signs; the readers' caps and the pins (``If-Match``, SHA-256) are shown for real.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3
import pytest

from twopass.config import Settings
from twopass.exceptions import ImageTooLargeError, MissingObjectError
from twopass.payloads import ImageChangedError, PayloadStore, pin, pinned
from twopass.queue.base import JobMessage
from twopass.uploads import Uploads

LIMIT = 1000


class CountingBody:
    """A GetObject body that counts the bytes taken from it."""

    def __init__(self, body: Any, counter: list[int]) -> None:
        self._body, self._counter = body, counter

    def read(self, amt: int | None = None) -> bytes:
        data: bytes = self._body.read(amt)
        self._counter.append(len(data))
        return data

    def close(self) -> None:
        self._body.close()


class CountingS3:
    """The real (moto) S3 client, with every GetObject body counted: what a reader took from S3."""

    def __init__(self) -> None:
        self.client = boto3.client("s3", region_name="us-east-1")
        self.reads: list[int] = []
        self.meta = self.client.meta

    def get_object(self, **params: Any) -> dict[str, Any]:
        response: dict[str, Any] = self.client.get_object(**params)
        response["Body"] = CountingBody(response["Body"], self.reads)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def s3() -> CountingS3:
    return CountingS3()


def ref_of(settings: Settings, key: str) -> str:
    return f"s3://{settings.payload_bucket}/payloads/{key}"


def put(s3: CountingS3, settings: Settings, key: str, data: bytes) -> str:
    s3.client.put_object(Bucket=settings.payload_bucket, Key=f"payloads/{key}", Body=data)
    return ref_of(settings, key)


def test_a_read_never_takes_more_than_the_limit_and_one_byte(aws: Settings, s3: CountingS3) -> None:
    store = PayloadStore(s3, max_bytes=LIMIT)
    assert store.fetch(put(s3, aws, "exact", b"x" * LIMIT)) == b"x" * LIMIT
    s3.reads.clear()
    big = put(s3, aws, "big", b"y" * (LIMIT * 50))
    with pytest.raises(ImageTooLargeError, match=f"{LIMIT * 50} bytes"):
        store.fetch(big)
    assert sum(s3.reads) == 0, "refused from its Content-Length: none of its body read"
    with pytest.raises(ImageTooLargeError):
        store.image(JobMessage(job_id="j", image_ref=big))  # the worker's read, with the store's own limit
    assert sum(s3.reads) == 0


def test_a_lying_content_length_still_stops_at_the_limit_and_one_byte(aws: Settings, s3: CountingS3) -> None:
    store = PayloadStore(s3, max_bytes=LIMIT)
    ref = put(s3, aws, "big", b"z" * (LIMIT * 10))
    real_get = s3.get_object

    def understated(**params: Any) -> dict[str, Any]:
        response = real_get(**params)
        response["ContentLength"] = 10  # as a broken or hostile store might say
        return response

    s3.get_object = understated  # type: ignore[method-assign]
    with pytest.raises(ImageTooLargeError):
        store.fetch(ref)
    assert sum(s3.reads) == LIMIT + 1


def test_a_pinned_read_refuses_a_replaced_object_and_reads_the_pinned_one(aws: Settings, s3: CountingS3) -> None:
    store = PayloadStore(s3, max_bytes=LIMIT)
    ref = put(s3, aws, "uploads/o/u1", b"first photo")
    data, etag = store.read(ref)
    pinned_ref = pin(ref, data, etag)
    assert pinned_ref.startswith(ref + "#") and pinned(pinned_ref)[0] is not None and pinned(ref) == (None, None)
    assert store.fetch(pinned_ref) == b"first photo"
    store.check(pinned_ref, LIMIT)
    put(s3, aws, "uploads/o/u1", b"second photo")  # the client sent to its URL again
    with pytest.raises(ImageChangedError, match="replaced after its job was accepted"):
        store.fetch(pinned_ref)
    with pytest.raises(ImageChangedError):
        store.check(pinned_ref, LIMIT)
    store.delete(pinned_ref)  # the fragment names the bytes, not another key
    with pytest.raises(MissingObjectError):
        store.check(pinned_ref, LIMIT)


def test_a_pin_checks_the_bytes_too_not_only_the_etag(aws: Settings, s3: CountingS3) -> None:
    """An ETag is an MD5, and MD5 collisions can be made: the SHA-256 decides."""
    store = PayloadStore(s3, max_bytes=LIMIT)
    ref = put(s3, aws, "uploads/o/u2", b"first photo")
    data, etag = store.read(ref)
    forged = pin(ref, b"what the fast model saw", etag)  # same ETag, other bytes
    with pytest.raises(ImageChangedError):
        store.fetch(forged)
    assert store.fetch(pin(ref, data, etag)) == data


def test_a_retry_check_refuses_an_oversized_object_without_reading_it(aws: Settings, s3: CountingS3) -> None:
    store = PayloadStore(s3, max_bytes=LIMIT)
    ref = put(s3, aws, "job1", b"q" * (LIMIT + 1))
    with pytest.raises(ImageTooLargeError):
        store.check(ref, LIMIT)
    store.check(ref, LIMIT + 1)
    assert s3.reads == [], "a HEAD only"


def test_the_presigned_post_policy_caps_the_size_the_key_and_the_type(aws: Settings) -> None:
    store = PayloadStore(boto3.client("s3", region_name="us-east-1"))
    uploads = Uploads(store, aws.payload_bucket, max_bytes=LIMIT, expiry_seconds=60)
    grant = uploads.create("owner", "image/png")
    assert grant.post_url and grant.post_fields["Content-Type"] == "image/png"
    key = grant.post_fields["key"]
    assert uploads.ref("owner", grant.upload_id).endswith("/" + key)
    policy = json.loads(base64.b64decode(grant.post_fields["policy"]))
    conditions = policy["conditions"]
    assert ["content-length-range", 1, LIMIT] in conditions, "S3 refuses a bigger body"
    assert {"key": key} in conditions and {"Content-Type": "image/png"} in conditions
    assert {"bucket": aws.payload_bucket} in conditions
    assert grant.post_fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256" and "x-amz-signature" in grant.post_fields
