"""``POST /predict {"upload_id"}``: the job of a presigned upload, its image read from the bucket.

The image never passes through API Gateway: the client sent it to S3, and the job refers to the very
object it sent, pinned to the bytes the fast model saw (``twopass.uploads``).
"""

from __future__ import annotations

import dataclasses

from twopass.api.body import Submission
from twopass.api.context import ApiContext
from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import PredictResponse
from twopass.api.usecases.submit import Caller, Submitted, submit
from twopass.uploads import UploadNotFoundError, UploadPendingError, Uploads, UploadTypeError


def available(context: ApiContext) -> Uploads:
    """The service's uploads, or a 501 where there is no payload bucket."""
    uploads = context.service.uploads
    if uploads is None:
        raise HTTPProblemError(
            501, "uploads_unavailable", "this service has no payload bucket, so it takes images inline only"
        )
    return uploads


async def submit_upload(context: ApiContext, submission: Submission, caller: Caller) -> Submitted:
    """``POST /predict {"upload_id"}``: the job of an upload, made once (the same answer ever after)."""
    uploads = available(context)
    upload_id = submission.upload_id or ""
    service = context.service
    try:
        expires_at = await context.io(uploads.expires_at, caller.owner, upload_id)
        claim = uploads.claim(caller.owner, upload_id, service.idempotency.ttl_seconds)
        # Before the object is looked at: once its job has succeeded the worker has deleted it.
        if (earlier := await context.io(service.idempotency.replay, claim)) is not None:
            return Submitted(PredictResponse.model_validate(earlier), replayed=True)
        upload = await context.io(uploads.locate, caller.owner, upload_id, expires_at)
        data, image_ref = await context.io(uploads.read, upload)
    except UploadNotFoundError as exc:
        raise HTTPProblemError(404, "upload_not_found", str(exc)) from None
    except UploadPendingError as exc:
        raise HTTPProblemError(409, "upload_pending", str(exc), headers={"Retry-After": "1"}) from None
    except UploadTypeError as exc:
        raise HTTPProblemError(415, "unsupported_media_type", str(exc)) from None
    return await submit(context, dataclasses.replace(submission, data=data, image_ref=image_ref, claim=claim), caller)
