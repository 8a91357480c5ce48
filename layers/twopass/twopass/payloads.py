"""Claim checks: images too big for a queue message travel through an S3 bucket instead.

The message then carries ``s3://bucket/key``; the worker fetches the bytes and, once the job has
succeeded, deletes them (the bucket's lifecycle rule removes anything left behind).
"""

from __future__ import annotations

from urllib.parse import urlparse

from botocore.exceptions import BotoCoreError, ClientError

from twopass.aws import client
from twopass.exceptions import DependencyError, InvalidImageError

PREFIX = "payloads/"


def put(bucket: str, job_id: str, data: bytes) -> str:
    """Store ``data`` for ``job_id``; returns the ``s3://`` reference the message carries."""
    key = f"{PREFIX}{job_id}"
    try:
        client("s3").put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")
    except (ClientError, BotoCoreError) as exc:
        raise DependencyError(f"payload bucket unavailable: {exc}") from exc
    return f"s3://{bucket}/{key}"


def _split(ref: str) -> tuple[str, str]:
    parsed = urlparse(ref)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/").startswith(PREFIX):
        raise InvalidImageError(f"not a twopass payload reference: {ref!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def fetch(ref: str) -> bytes:
    """The bytes behind a reference. A missing object is a bad job, not an outage."""
    bucket, key = _split(ref)
    try:
        body: bytes = client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            raise InvalidImageError(f"the image payload {ref} no longer exists") from exc
        raise DependencyError(f"payload bucket unavailable: {exc}") from exc
    except BotoCoreError as exc:
        raise DependencyError(f"payload bucket unavailable: {exc}") from exc
    return body


def delete(ref: str) -> None:
    bucket, key = _split(ref)
    try:
        client("s3").delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise DependencyError(f"could not delete payload {ref}: {exc}") from exc
