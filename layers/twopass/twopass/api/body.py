"""Reading a submission from the request: a JSON body or a raw ``image/*`` body, with limits first.

Everything a client can send ends in a 4xx here: bodies over the size limit before they are read
whole, JSON nested too deeply before it is parsed, invalid UTF-8, duplicate keys, NaN and Infinity.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from twopass.api.errors import HTTPProblemError
from twopass.api.schemas import PredictRequest
from twopass.api.usecases.control import JobOptions
from twopass.cascade import SlowMode, parse_mode
from twopass.config import Settings
from twopass.exceptions import ImageTooLargeError, InvalidRequestError
from twopass.jobs.base import IdempotencyRecord
from twopass.notify.guard import CallbackURLError, check_url

#: Our JSON bodies are flat objects; anything with more arrays and objects than this is refused
#: before parsing (a 5,000-deep body would otherwise reach the parser's recursion limit).
MAX_JSON_CONTAINERS = 256


@dataclass(frozen=True)
class Submission:
    """One image to classify, and what the client asked to happen with its job."""

    data: bytes
    callback_url: str | None = None
    #: What the client asked of the slow model (``twopass.cascade``).
    slow: SlowMode = SlowMode.AUTO
    #: The job's deadline, priority and what to do when the service is overloaded.
    options: JobOptions = field(default_factory=JobOptions)
    #: ``{"upload_id"}`` of a JSON body: ``data`` is empty until the upload has been read
    #: (``twopass.api.usecases.uploads``).
    upload_id: str | None = None
    #: Where the image already is (an upload's object): the job refers to it instead of a copy.
    image_ref: str | None = None
    #: The idempotency claim the submission makes itself (an upload's), instead of an Idempotency-Key's.
    claim: IdempotencyRecord | None = None


def json_limit(settings: Settings) -> int:
    """The largest JSON body: the image limit in base64 (4/3) plus room for the other fields."""
    return settings.max_image_bytes * 4 // 3 + 4096


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, refusing it as soon as it passes ``limit`` (whatever Content-Length claimed)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooLargeError(f"the body is {declared} bytes; the limit is {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ImageTooLargeError(f"the body is over {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # Nobody is left to answer; end the request as a client error, not an unhandled one.
        raise InvalidRequestError("client_disconnected", "the client went away before sending the whole body") from None
    return b"".join(chunks)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, bounded nesting, no duplicate keys, no NaN/Infinity; else a 400."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_CONTAINERS:
        raise InvalidRequestError("invalid_json", f"the JSON has more than {MAX_JSON_CONTAINERS} arrays and objects")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequestError("invalid_json", f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidRequestError("invalid_json", "the JSON is nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequestError("invalid_json", f"the body is not valid JSON: {exc}") from None


def model_from_json[M: BaseModel](model: type[M], payload: Any) -> M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise HTTPProblemError(422, "validation_error", problems) from None


def decode_image_data(text: str, limit: int) -> bytes:
    """``image_data`` (base64, or a ``data:`` URL as browsers make them) → the image bytes."""
    text = text.strip()
    if text.startswith("data:") and "," in text[:100]:
        text = text.split(",", 1)[1]
    if len(text) > limit * 4 // 3 + 4:
        raise ImageTooLargeError(f"image_data decodes to more than {limit} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError("invalid_base64", f"image_data is not valid base64: {exc}") from None
    if not data:
        raise InvalidRequestError("empty_image", "image_data is empty")
    return data


def _check_callback(url: str, settings: Settings) -> None:
    check_url(url, allow_private=settings.callback_allow_private, allow_http=settings.callback_allow_http)


async def checked_callback(url: str | None, settings: Settings) -> str | None:
    """``url`` once the SSRF guard accepts it; the guard's DNS lookup blocks, so it runs in a thread
    and within the request's deadline."""
    if url is None:
        return None
    try:
        async with asyncio.timeout(settings.api_deadline_seconds):
            await asyncio.to_thread(_check_callback, url, settings)
    except CallbackURLError as exc:
        raise InvalidRequestError("invalid_callback_url", str(exc)) from None
    except TimeoutError:
        raise InvalidRequestError("invalid_callback_url", "the callback host did not resolve in time") from None
    return url


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_submission(
    request: Request,
    settings: Settings,
    callback_url: str | None = None,
    slow: str | None = None,
    options: JobOptions | None = None,
) -> Submission:
    """The image (JSON ``image_data`` or a raw ``image/*`` body), the optional callback URL and slow mode
    (``callback_url``, ``slow`` and ``options`` come from the query; the JSON body's fields win over them)."""
    options = options or JobOptions()
    body = await read_capped(request, json_limit(settings))
    if not body:
        raise InvalidRequestError("empty_body", 'the body is empty: send {"image_data": "<base64>"} or an image/* body')
    ctype = media_type(request)
    if ctype == "application/json" or ctype.endswith("+json") or (not ctype and body[:1] == b"{"):
        fields = model_from_json(PredictRequest, parse_json(body))
        # The validator lets exactly one of the two through: no image_data means an upload_id.
        data = b"" if fields.image_data is None else decode_image_data(fields.image_data, settings.max_image_bytes)
        mode = parse_mode(fields.slow or slow)
        asked = JobOptions(fields.deadline_seconds, fields.priority, fields.on_overload).over(options)
        url = await checked_callback(fields.callback_url or callback_url, settings)
        return Submission(data, url, mode, asked, upload_id=fields.upload_id)
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        if len(body) > settings.max_image_bytes:
            raise ImageTooLargeError(f"the image is {len(body)} bytes; the limit is {settings.max_image_bytes} bytes")
        return Submission(body, await checked_callback(callback_url, settings), parse_mode(slow), options)
    raise HTTPProblemError(415, "unsupported_media_type", f"content type {ctype!r}: send application/json or image/*")
