"""``POST /uploads``: a presigned POST (and PUT) for an image too big for one request (``POST /predict
{"upload_id"}``'s side of it is :func:`twopass.api.usecases.uploads.submit_upload`).

The image never passes through API Gateway: the client sends it to S3, and the job refers to the very
object it sent, pinned to the bytes the fast model saw (``twopass.uploads``).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from twopass.api.auth import Owner
from twopass.api.body import model_from_json, parse_json, read_capped
from twopass.api.context import Context
from twopass.api.docs import ERRORS
from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import UploadPost, UploadRequest, UploadResponse, iso
from twopass.api.usecases.uploads import available
from twopass.exceptions import InvalidRequestError
from twopass.uploads import UploadTypeError

router = APIRouter(tags=["predict"])

#: A POST /uploads body is two small fields.
_BODY_LIMIT = 4096


@router.post(
    "/uploads",
    summary="Get a presigned POST (or PUT) for a big image, then POST /predict with its upload_id",
    description="The answer's post takes one multipart/form-data POST of its fields then the image file as "
    "'file', until expires_at; S3 refuses one over max_bytes. Its url takes one PUT of the image with exactly "
    "the answer's headers instead: S3 does not cap a PUT's size, so an image over max_bytes is refused when it "
    'is used (413). Then POST /predict {"upload_id": "..."}; sending the image again after that changes nothing '
    "the job sees (a replaced image fails the job).",
    status_code=201,
    response_model=UploadResponse,
    responses=ERRORS,
)
async def create_upload(request: Request, context: Context, owner: Owner) -> UploadResponse:
    body = await read_capped(request, _BODY_LIMIT)
    if not body:
        raise InvalidRequestError("empty_body", 'the body is empty: send {"content_type": "image/jpeg"}')
    fields = model_from_json(UploadRequest, parse_json(body))
    uploads = available(context)
    try:
        grant = await context.io(uploads.create, owner, fields.content_type, fields.content_length)
    except UploadTypeError as exc:
        raise HTTPProblemError(415, "unsupported_media_type", str(exc)) from None
    return UploadResponse(
        upload_id=grant.upload_id,
        url=grant.url,
        method="PUT",
        headers=grant.headers,
        expires_at=iso(grant.expires_at) or "",
        max_bytes=grant.max_bytes,
        post=UploadPost(url=grant.post_url, fields=grant.post_fields),
    )
