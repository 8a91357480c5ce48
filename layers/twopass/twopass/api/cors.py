"""CORS: which browser pages on other origins may call the API, and what they may send and read.

A pure ASGI middleware outside every route: a preflight (``OPTIONS`` with
``Access-Control-Request-Method``) is answered here, before any key or token check, as a browser
sends it without either; every other answer of an allowed origin, errors included, carries
``Access-Control-Allow-Origin``, or the browser hides the error from the page. A refused origin's
preflight is a 403 without CORS headers, and its actual requests get no CORS headers (the browser
then blocks the page from reading them). On AWS the same list is API Gateway's CORS configuration
and its gateway responses (template parameter ``CorsAllowOrigins``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: What a page may send: the key, a user token, idempotency, and the bodies the API takes.
ALLOW_HEADERS = ("x-api-key", "authorization", "content-type", "idempotency-key")
#: What a page may read besides the CORS-safelisted headers: when to retry, and whether an answer is a replay.
EXPOSE_HEADERS = ("Retry-After", "Idempotent-Replayed", "Location")
ALLOW_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")
#: How long a browser may reuse a preflight's answer (seconds).
MAX_AGE = 600
#: What the local stack allows: a front-end dev server on this machine, whatever its port.
LOCAL_ORIGINS = "http://localhost:*,http://127.0.0.1:*"


class OriginPolicy:
    """The origins allowed, from ``TWOPASS_CORS_ALLOW_ORIGINS``: exact origins, ``scheme://host:*``, or ``*``."""

    def __init__(self, origins: Iterable[str]) -> None:
        entries = [o.strip().rstrip("/") for o in origins if o.strip()]
        self.any = "*" in entries
        self.exact = frozenset(e.lower() for e in entries if not e.endswith(":*") and e != "*")
        ports = [re.escape(e[:-2].lower()) for e in entries if e.endswith(":*")]
        # ``:*`` means any port, or none given (http://localhost is http://localhost:80 to a browser).
        self._any_port = re.compile(rf"(?:{'|'.join(ports)})(?::\d{{1,5}})?") if ports else None

    @classmethod
    def parse(cls, setting: str) -> OriginPolicy:
        return cls(setting.split(","))

    def __bool__(self) -> bool:
        return self.any or bool(self.exact) or self._any_port is not None

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        if self.any or origin in self.exact:
            return True
        return bool(self._any_port and self._any_port.fullmatch(origin))


class CorsMiddleware:
    """Answers preflights and adds CORS headers to the answers of allowed origins."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.policy:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(origin, headers, send)
            return
        if not self.policy.allows(origin):
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                answer.update(self._simple_headers(origin))
                answer.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    def _simple_headers(self, origin: str) -> dict[str, str]:
        # The origin itself, never "*": a page may send credentials (Authorization) with its calls.
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Expose-Headers": ", ".join(EXPOSE_HEADERS)}

    async def _preflight(self, origin: str, headers: Headers, send: Send) -> None:
        if not self.policy.allows(origin):
            await _send_json(send, 403, {"error": "cors_origin_refused", "detail": f"origin {origin} is not allowed"})
            return
        requested = {h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",")}
        refused = sorted(h for h in requested - {""} if h not in ALLOW_HEADERS)
        method = headers["access-control-request-method"].upper()
        if method not in ALLOW_METHODS or refused:
            what = f"method {method}" if method not in ALLOW_METHODS else f"header(s) {', '.join(refused)}"
            await _send_json(send, 403, {"error": "cors_request_refused", "detail": f"{what} not allowed"})
            return
        cors = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ", ".join(ALLOW_METHODS),
            "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
            "Access-Control-Max-Age": str(MAX_AGE),
            "Vary": "Origin",
        }
        await send({"type": "http.response.start", "status": 204, "headers": _raw(cors)})
        await send({"type": "http.response.body", "body": b""})


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


async def _send_json(send: Send, status: int, body: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), "Vary": "Origin"}
    await send({"type": "http.response.start", "status": status, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": data})
