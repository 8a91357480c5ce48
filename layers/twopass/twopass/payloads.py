"""Claim checks: images too big for a queue message travel through an S3 bucket instead.

The message then carries ``s3://bucket/key``; the worker fetches the bytes and, once the job has
succeeded, deletes them (the bucket's lifecycle rule removes anything left behind). The image of a
job that did not succeed is kept for a retry: the worker puts an inline one into the bucket too. This module is
the only code that puts, fetches or deletes them: :class:`~twopass.queue.base.JobMessage` is plain data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from twopass import aws
from twopass.aws import translate_errors
from twopass.exceptions import InvalidImageError, MissingObjectError

if TYPE_CHECKING:
    from twopass.queue.base import JobMessage

PREFIX = "payloads/"


def _split(ref: str) -> tuple[str, str]:
    parsed = urlparse(ref)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.lstrip("/").startswith(PREFIX):
        raise InvalidImageError(f"not a twopass payload reference: {ref!r}")
    return parsed.netloc, parsed.path.lstrip("/")


class PayloadStore:
    """Puts, fetches and deletes claim-checked images.

    Raises :class:`~twopass.exceptions.MissingObjectError` for a payload that no longer exists (a bad
    job, not an outage) and :class:`~twopass.exceptions.DependencyError` when the bucket is unavailable.
    """

    def __init__(self, client: Any | None = None, bucket: str = "") -> None:
        self._client = client
        self._signer: Any = None
        #: Where the worker keeps the inline image of a job that did not succeed ("": it keeps none).
        self.bucket = bucket

    @property
    def client(self) -> Any:
        # Made on first use: most images travel inline, and a worker that never sees a claim
        # check never needs an S3 client.
        if self._client is None:
            self._client = aws.client("s3")
        return self._client

    def put(self, bucket: str, job_id: str, data: bytes) -> str:
        """Store ``data`` for ``job_id``; returns the ``s3://`` reference the message carries."""
        key = f"{PREFIX}{job_id}"
        with translate_errors("store image payload"):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")
        return f"s3://{bucket}/{key}"

    def fetch(self, ref: str) -> bytes:
        """The bytes behind a reference."""
        bucket, key = _split(ref)
        with translate_errors(f"image payload {ref}"):
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def exists(self, ref: str) -> bool:
        """Whether the bytes behind a reference are still kept (a HEAD, nothing downloaded).

        ``False`` once the worker or the bucket's lifecycle rule removed them; a bucket that cannot be
        reached raises :class:`~twopass.exceptions.DependencyError` rather than passing for "gone".
        """
        bucket, key = _split(ref)
        try:
            with translate_errors(f"image payload {ref}"):
                self.client.head_object(Bucket=bucket, Key=key)
        except MissingObjectError:
            return False
        return True

    def presign_put(self, ref: str, content_type: str, expires_seconds: int, content_length: int | None = None) -> str:
        """A URL through which a client PUTs the object behind ``ref`` itself, signed for ``content_type``
        (and ``content_length`` when given). No call to S3: the client's credentials sign it locally."""
        bucket, key = _split(ref)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key, "ContentType": content_type}
        if content_length is not None:
            params["ContentLength"] = content_length
        with translate_errors(f"presign image upload {ref}"):
            url: str = self._presigner().generate_presigned_url(
                "put_object", Params=params, ExpiresIn=expires_seconds, HttpMethod="PUT"
            )
        return url

    def _presigner(self) -> Any:
        # Signature version 4, whatever the client's default: botocore still presigns us-east-1 URLs
        # with version 2, which signs neither Content-Length nor a session token's expiry.
        if self._signer is None:
            import boto3
            from botocore.config import Config

            # A session of its own: creating clients from a shared session is not thread-safe.
            session = boto3.session.Session(region_name=self.client.meta.region_name)
            config = Config(signature_version="s3v4")
            self._signer = session.client("s3", endpoint_url=aws.endpoint_url(), config=config)
        return self._signer

    def head(self, ref: str) -> tuple[int, str] | None:
        """``(size in bytes, content type)`` of the object behind ``ref``; ``None`` when there is none."""
        bucket, key = _split(ref)
        try:
            with translate_errors(f"image payload {ref}"):
                meta = self.client.head_object(Bucket=bucket, Key=key)
        except MissingObjectError:
            return None
        return int(meta.get("ContentLength", 0)), str(meta.get("ContentType", ""))

    def put_ref(self, ref: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Store ``data`` at a reference the caller chose (an upload's ticket)."""
        bucket, key = _split(ref)
        with translate_errors(f"store {ref}"):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)

    def image(self, message: JobMessage) -> bytes:
        """A job's image: inline in the message, or fetched from the bucket for a claim check."""
        if message.image is not None:
            return message.image
        return self.fetch(message.image_ref or "")

    def delete(self, ref: str) -> None:
        bucket, key = _split(ref)
        with translate_errors(f"delete image payload {ref}"):
            self.client.delete_object(Bucket=bucket, Key=key)


def put(bucket: str, job_id: str, data: bytes) -> str:
    """:meth:`PayloadStore.put` with the default S3 client (the API's call)."""
    return PayloadStore().put(bucket, job_id, data)
