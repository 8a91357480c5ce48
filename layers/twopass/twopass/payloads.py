"""Claim checks: images too big for a queue message travel through an S3 bucket instead.

The message then carries ``s3://bucket/key``; the worker fetches the bytes and, once the job has
succeeded, deletes them (the bucket's lifecycle rule removes anything left behind). The image of a
job that did not succeed is kept for a retry: the worker puts an inline one into the bucket too. This module is
the only code that puts, fetches or deletes them: :class:`~twopass.queue.base.JobMessage` is plain data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlparse

from twopass import aws
from twopass.aws import translate_errors
from twopass.exceptions import ImageTooLargeError, InvalidImageError, MissingObjectError, TwopassError

if TYPE_CHECKING:
    from twopass.queue.base import JobMessage

PREFIX = "payloads/"
#: The largest object a reader takes unless told otherwise: the largest upload the API accepts by default.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024


class ImageChangedError(InvalidImageError):
    """The object behind a pinned reference is no longer the image its job was accepted with."""


class ImagePendingError(TwopassError):
    """The image of a job that did not succeed is on its way to the bucket (a worker keeps it): ask again."""


def pin(ref: str, data: bytes, etag: str) -> str:
    """``ref`` pinned to the bytes read from it: their SHA-256 and the object's ETag."""
    fields = {"sha256": hashlib.sha256(data).hexdigest(), "etag": etag.strip('"')}
    return f"{ref.split('#', 1)[0]}#{urlencode(fields)}"


def pinned(ref: str) -> tuple[str | None, str | None]:
    """``(sha256, etag)`` a reference is pinned to; ``(None, None)`` for an unpinned one."""
    fields = dict(parse_qsl(urlparse(ref).fragment))
    return fields.get("sha256"), fields.get("etag")


def _precondition_failed(exc: Exception) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code in ("PreconditionFailed", "412") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412


@contextmanager
def _pinned_call(what: str) -> Iterator[None]:
    """:func:`translate_errors`, with S3's 412 for a stale ``If-Match`` as :class:`ImageChangedError`."""
    from botocore.exceptions import ClientError

    with translate_errors(what):
        try:
            yield
        except ClientError as exc:
            if _precondition_failed(exc):
                raise ImageChangedError(CHANGED) from None
            raise


#: A replaced image's error, as the job (or the retry) shows it.
CHANGED = "the uploaded image was replaced after its job was accepted, so the job will not run on it; submit it anew"


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

    def __init__(
        self,
        client: Any | None = None,
        bucket: str = "",
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        budget: aws.CallBudget | None = None,
    ) -> None:
        self._client = client
        #: The time budget of the client made on first use (the API's request path passes its own).
        self._budget = budget
        self._signer: Any = None
        #: Where the worker keeps the inline image of a job that did not succeed ("": it keeps none).
        self.bucket = bucket
        #: The most bytes :meth:`image` reads from the bucket.
        self.max_bytes = max_bytes

    @property
    def client(self) -> Any:
        # Made on first use: most images travel inline, and a worker that never sees a claim
        # check never needs an S3 client.
        if self._client is None:
            self._client = aws.client("s3") if self._budget is None else aws.client("s3", self._budget)
        return self._client

    def put(self, bucket: str, job_id: str, data: bytes) -> str:
        """Store ``data`` for ``job_id``; returns the ``s3://`` reference the message carries."""
        key = f"{PREFIX}{job_id}"
        with translate_errors("store image payload"):
            self.client.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")
        return f"s3://{bucket}/{key}"

    def fetch(self, ref: str, max_bytes: int | None = None) -> bytes:
        """The bytes behind a reference, at most ``max_bytes`` (:attr:`max_bytes` when not given).

        Raises :class:`~twopass.exceptions.ImageTooLargeError` for a bigger object (its body unread) and,
        for a pinned reference, :class:`ImageChangedError` when the object is not the pinned image.
        """
        return self.read(ref, max_bytes)[0]

    def read(self, ref: str, max_bytes: int | None = None) -> tuple[bytes, str]:
        """:meth:`fetch`, with the object's ETag: ``(bytes, etag)``."""
        limit = self.max_bytes if max_bytes is None else max_bytes
        bucket, key = _split(ref)
        sha256, etag = pinned(ref)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag:
            params["IfMatch"] = f'"{etag}"'
        with _pinned_call(f"image payload {ref}"):
            response = self.client.get_object(**params)
            body = response["Body"]
            try:
                size = int(response.get("ContentLength", 0))
                if size > limit:  # refused from its headers: none of the body is read
                    raise ImageTooLargeError(f"the stored image is {size} bytes; the limit is {limit} bytes")
                # Never more than the limit and one byte, whatever the headers said.
                data: bytes = body.read(limit + 1)
            finally:
                body.close()
        if len(data) > limit:
            raise ImageTooLargeError(f"the stored image is over {limit} bytes, the limit")
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ImageChangedError(CHANGED)
        return data, str(response.get("ETag", ""))

    def check(self, ref: str, max_bytes: int) -> None:
        """That the object behind ``ref`` is still there, within ``max_bytes`` and (pinned) the same ETag:
        a HEAD, nothing downloaded (the reader checks the bytes themselves).

        Raises :class:`~twopass.exceptions.MissingObjectError`, :class:`ImageChangedError` or
        :class:`~twopass.exceptions.ImageTooLargeError`.
        """
        bucket, key = _split(ref)
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if etag := pinned(ref)[1]:
            params["IfMatch"] = f'"{etag}"'
        with _pinned_call(f"image payload {ref}"):
            meta = self.client.head_object(**params)
        if etag and str(meta.get("ETag", "")).strip('"') != etag:
            raise ImageChangedError(CHANGED)  # a store that ignores If-Match
        size = int(meta.get("ContentLength", 0))
        if size > max_bytes:
            raise ImageTooLargeError(f"the stored image is {size} bytes; the limit is {max_bytes} bytes")

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

    def presign_post(
        self, ref: str, content_type: str, expires_seconds: int, max_bytes: int
    ) -> tuple[str, dict[str, str]]:
        """``(url, form fields)`` of a presigned POST for the object behind ``ref``: unlike a presigned PUT,
        its policy makes S3 itself refuse a body over ``max_bytes`` (``content-length-range``), another
        key or another ``Content-Type``. No call to S3."""
        bucket, key = _split(ref)
        conditions: list[Any] = [{"Content-Type": content_type}, ["content-length-range", 1, max_bytes]]
        with translate_errors(f"presign image upload {ref}"):
            post: dict[str, Any] = self._presigner().generate_presigned_post(
                bucket, key, Fields={"Content-Type": content_type}, Conditions=conditions, ExpiresIn=expires_seconds
            )
        return str(post["url"]), {str(k): str(v) for k, v in post["fields"].items()}

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
        return self.fetch(message.image_ref or "", self.max_bytes)

    def delete(self, ref: str) -> None:
        bucket, key = _split(ref)
        with translate_errors(f"delete image payload {ref}"):
            self.client.delete_object(Bucket=bucket, Key=key)


def put(bucket: str, job_id: str, data: bytes) -> str:
    """:meth:`PayloadStore.put` with the default S3 client (the API's call)."""
    return PayloadStore().put(bucket, job_id, data)
