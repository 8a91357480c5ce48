"""Presigned uploads: an image too big for one API request goes straight into the payload bucket.

``POST /uploads`` hands the client a presigned POST (and, for older clients, a presigned PUT) for
``payloads/uploads/<owner hash>/<upload id>`` and writes a small *ticket* beside it (``…/<upload
id>.ticket``: the upload's expiry and limits). The ticket is what tells an unknown upload (404) from
one not sent yet (409): neither has an object. ``POST /predict {"upload_id"}`` then reads the object
and queues the job with the object itself as its claim check, so the image is never copied. Keys sit
under ``payloads/``, so the bucket's lifecycle rule, the worker's delete-after-success and both roles'
S3 permissions cover them as they cover every other claim check.

Sizes: the POST's policy makes S3 refuse a body over the limit (``content-length-range``); a PUT
cannot be capped by S3, so the size is checked with a HEAD before the object is read, and the read
itself stops at the limit and one byte. The client may send to its URL again while the URL is valid,
so the job's reference is *pinned* to the bytes the API read (:func:`twopass.payloads.pin`): the
worker and a retry refuse a replaced object instead of classifying it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from twopass.exceptions import ImageTooLargeError, InvalidImageError, MissingObjectError, TwopassError
from twopass.jobs.base import IdempotencyRecord
from twopass.payloads import PREFIX, PayloadStore, pin

UPLOAD_PREFIX = f"{PREFIX}uploads/"
#: What an upload may hold: the image types the fast model decodes.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class UploadNotFoundError(TwopassError):
    """No such upload for this owner, or it expired before its image was PUT."""


class UploadPendingError(TwopassError):
    """The upload exists, but its image has not been PUT yet."""


class UploadTypeError(InvalidImageError):
    """The object was stored with a content type that is not an image type."""


def is_upload_id(value: str) -> bool:
    return _UPLOAD_ID.fullmatch(value) is not None


def _owner_dir(owner: str) -> str:
    # Owner ids hold a gateway key id or a key hash: hashed again so keys never name them outright.
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Grant:
    """What ``POST /uploads`` answers: where and how to send the image (a PUT, or a POST S3 caps)."""

    upload_id: str
    url: str
    headers: dict[str, str]
    expires_at: float
    max_bytes: int
    #: The presigned POST: its URL and the form fields to send before the file.
    post_url: str
    post_fields: dict[str, str]


@dataclass(frozen=True)
class Upload:
    """An upload whose image is in the bucket, ready to be classified."""

    upload_id: str
    ref: str
    size: int
    content_type: str


class Uploads:
    """Creates uploads and finds them again for their owner. Every method blocks on S3."""

    def __init__(
        self,
        payloads: PayloadStore,
        bucket: str,
        *,
        max_bytes: int,
        expiry_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.payloads = payloads
        self.bucket = bucket
        self.max_bytes = max_bytes
        self.expiry_seconds = max(1, expiry_seconds)
        self._clock = clock

    def ref(self, owner: str, upload_id: str) -> str:
        """The ``s3://`` reference of the upload's object (the job's claim check once used)."""
        return f"s3://{self.bucket}/{UPLOAD_PREFIX}{_owner_dir(owner)}/{upload_id}"

    def create(self, owner: str, content_type: str, content_length: int | None = None) -> Grant:
        """A new upload for ``owner``: its ticket written, its PUT URL signed."""
        if content_type not in IMAGE_TYPES:
            raise UploadTypeError(f"content type {content_type!r}: uploads take {', '.join(IMAGE_TYPES)}")
        if content_length is not None and content_length > self.max_bytes:
            raise ImageTooLargeError(f"the image is {content_length} bytes; uploads take up to {self.max_bytes} bytes")
        upload_id = uuid.uuid4().hex
        expires_at = self._clock() + self.expiry_seconds
        ref = self.ref(owner, upload_id)
        ticket = {"expires_at": expires_at, "content_type": content_type, "max_bytes": self.max_bytes}
        self.payloads.put_ref(ref + ".ticket", json.dumps(ticket).encode(), "application/json")
        url = self.payloads.presign_put(ref, content_type, self.expiry_seconds, content_length)
        post_url, post_fields = self.payloads.presign_post(ref, content_type, self.expiry_seconds, self.max_bytes)
        headers = {"Content-Type": content_type}
        if content_length is not None:
            headers["Content-Length"] = str(content_length)
        return Grant(upload_id, url, headers, expires_at, self.max_bytes, post_url, post_fields)

    def expires_at(self, owner: str, upload_id: str) -> float:
        """When the owner's upload's URL expires; raises :class:`UploadNotFoundError` for an unknown one."""
        if not is_upload_id(upload_id):
            raise UploadNotFoundError(f"no upload {upload_id!r}: upload ids are 32 hexadecimal characters")
        try:
            ticket = json.loads(self.payloads.fetch(self.ref(owner, upload_id) + ".ticket"))
        except MissingObjectError:
            raise UploadNotFoundError(f"no upload {upload_id!r} (unknown or expired)") from None
        return float(ticket["expires_at"])

    def claim(self, owner: str, upload_id: str, ttl_seconds: float) -> IdempotencyRecord:
        """The idempotency claim of a job made from this upload: one upload, one job, one answer.

        The key space cannot meet an ``Idempotency-Key`` header's: those are printable, this holds NULs.
        """
        return IdempotencyRecord(
            key_hash=hashlib.sha256(f"{owner}\0upload\0{upload_id}".encode()).hexdigest(),
            job_id="",
            body_hash=hashlib.sha256(upload_id.encode()).hexdigest(),
            expires_at=int(self._clock() + ttl_seconds),
        )

    def locate(self, owner: str, upload_id: str, expires_at: float) -> Upload:
        """The upload's object, once checked: PUT (else pending, or gone past its expiry), within the size
        limit and of an image type. Nothing is downloaded here."""
        ref = self.ref(owner, upload_id)
        head = self.payloads.head(ref)
        if head is None:
            if self._clock() >= expires_at:
                raise UploadNotFoundError(f"upload {upload_id} expired before its image was PUT")
            raise UploadPendingError(f"upload {upload_id} has no image yet: PUT it to the upload's url first")
        size, content_type = head
        if size > self.max_bytes:
            raise ImageTooLargeError(f"the uploaded image is {size} bytes; uploads take up to {self.max_bytes} bytes")
        media = content_type.split(";")[0].strip().lower()
        if media not in IMAGE_TYPES:
            raise UploadTypeError(f"the upload was stored as {content_type!r}, not an image type")
        return Upload(upload_id, ref, size, media)

    def read(self, upload: Upload) -> tuple[bytes, str]:
        """``(the image's bytes, the job's reference to them)``: read within the limit (the object may have
        been replaced since the HEAD), the reference pinned to exactly these bytes."""
        try:
            data, etag = self.payloads.read(upload.ref, self.max_bytes)
        except MissingObjectError:
            raise UploadNotFoundError(f"upload {upload.upload_id}'s image is gone") from None
        except ImageTooLargeError:
            raise ImageTooLargeError(f"the uploaded image is over {self.max_bytes} bytes, the uploads' limit") from None
        return data, pin(upload.ref, data, etag)
