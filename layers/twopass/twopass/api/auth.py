"""Who is calling: the API key check and the job owner it yields.

On AWS, API Gateway's usage plan checks ``x-api-key`` before the function runs and puts the key's
id in the request context; the owner is that id. Where the app checks keys itself (the local stack,
``sam local``), the owner is a hash of the key, so each key is a tenant of its own. With no keys
configured every caller is the one anonymous owner.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from twopass.api.context import Context
from twopass.api.errors import HTTPProblemError
from twopass.jobs.base import ANONYMOUS

#: Declared as a security scheme so ``/docs`` offers "Authorize" and sends the key on "Try it out".
api_key_header = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    description="The API key (on AWS, from the usage plan; locally, one of TWOPASS_API_KEYS).",
)


def _gateway_key_id(request: Request) -> str | None:
    event: dict[str, Any] = request.scope.get("aws.event") or {}
    identity = (event.get("requestContext") or {}).get("identity") or {}
    key_id = identity.get("apiKeyId")
    return str(key_id) if key_id else None


def key_owner(key: str) -> str:
    """The owner id of a key the app checks itself (never the key: it is stored on every job)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]


async def caller(context: Context, request: Request, key: Annotated[str | None, Security(api_key_header)]) -> str:
    """The caller's owner id, after checking its key when the app is configured with keys.

    Async only to stay off the thread pool (see :func:`~twopass.api.context.get_context`); it never blocks.
    """
    keys = context.settings.api_key_set
    if keys:
        given = (key or "").encode()
        if not any(hmac.compare_digest(given, k.encode()) for k in keys):
            raise HTTPProblemError(403, "forbidden", "missing or invalid x-api-key header")
        return key_owner(key or "")
    key_id = _gateway_key_id(request)
    return f"apikey:{key_id}" if key_id else ANONYMOUS


Owner = Annotated[str, Depends(caller)]
