"""The local API's HTTP/1.1 protocol: uvicorn's h11 protocol with the limits a public endpoint needs.

API Gateway stands in front of the function on AWS; locally uvicorn faces clients directly, so it
gets what uvicorn leaves out:

- **Header size**: a request line plus headers over ``max_header_bytes`` gets ``431`` (uvicorn turns
  every h11 error into a 400, and h11 only notices an oversized head while it is still incomplete).
- **Header and body timeouts**: a connection that has not sent a complete request head within
  ``header_timeout`` seconds of connecting (or of starting a request) gets ``408``; a body not
  complete within ``body_timeout`` seconds of its head gets ``408`` (or is closed, if the app has
  already answered). Idle keep-alive connections close after uvicorn's ``--timeout-keep-alive``.
- **Answers a client can read**: closing a socket that still has unread input makes the kernel send
  a reset, so a client in the middle of sending a 1 MiB header would see "connection reset" instead
  of the 431. Errors are written, our side is shut down, and what the client still sends is read and
  dropped for a bounded time and size before the connection closes.

Error bodies are the API's JSON shape, ``{"error": code, "detail": text}``, and name nothing internal.
Limits come from the environment (the local stack passes its own through): ``TWOPASS_LOCAL_HTTP_*``
below. Two protocols keep them alike: :class:`LocalHttpToolsProtocol` on httptools' parser (the local
stack's, where uvicorn's standard extra installed it: less CPU per request) and
:class:`LocalH11Protocol` on h11's; used as ``uvicorn --http twopass.local.httpserver:<class>``.
"""

from __future__ import annotations

import asyncio
import http
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] (twopass[serve])
from uvicorn.server import ServerState

ENV_PREFIX = "TWOPASS_LOCAL_HTTP_"


@dataclass(frozen=True)
class HttpLimits:
    #: Largest request line + headers, in bytes.
    max_header_bytes: int = 16 * 1024
    #: Seconds from connecting (or from the first byte of a later request) to a complete head.
    header_timeout: float = 10.0
    #: Seconds from a complete head to a complete body.
    body_timeout: float = 30.0
    #: After an error answer: how long, and how many bytes, the rest of the request is read and dropped.
    linger_seconds: float = 2.0
    linger_bytes: int = 8 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HttpLimits:
        """Defaults, overridden by ``TWOPASS_LOCAL_HTTP_MAX_HEADER_BYTES``, ``…_HEADER_TIMEOUT``, …"""
        source = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, default in cls().__dict__.items():
            raw = source.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = type(default)(raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.__dict__.items()}


class _LimitedConnection(h11.Connection):
    """h11's server side with an exact cap on the request head; remembers the last protocol error."""

    def __init__(self, max_header_bytes: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.max_header_bytes = max_header_bytes
        self.last_error: h11.RemoteProtocolError | None = None

    def next_event(self) -> Any:
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as exc:
            self.last_error = exc
            raise
        if isinstance(event, h11.Request):
            # A head that arrived in one read is never "incomplete": measure it here too.
            size = len(event.method) + len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
            if size > self.max_header_bytes:
                self.last_error = h11.RemoteProtocolError("request head too large", error_status_hint=431)
                raise self.last_error
        return event


_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "the request is not valid HTTP/1.1"),
    408: ("request_timeout", "the request was not received in time"),
    413: ("payload_too_large", "the request is too large"),
    414: ("uri_too_long", "the request line is too long"),
    431: ("request_header_fields_too_large", "the request line and headers are too large"),
    501: ("not_implemented", "the request uses a transfer coding this server does not implement"),
}


class _ErrorAnswers:
    """The readable error answer and the linger after it, shared by both protocols."""

    limits: ClassVar[HttpLimits]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    _lingering: bool
    _header_timer: asyncio.TimerHandle | None
    _body_timer: asyncio.TimerHandle | None
    _linger_timer: asyncio.TimerHandle | None

    _dropped: int

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)  # type: ignore[call-arg]  # uvicorn's protocol
        self._header_timer = self._body_timer = self._linger_timer = None
        self._lingering = False
        self._dropped = 0
        self._new_connection()
        # uvicorn makes one protocol per accepted connection, just before connection_made: the clock
        # for the first request head starts now (uvicorn itself never times out a silent connection).
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def _new_connection(self) -> None:
        """Each protocol's own state for a new connection, set before its first head's clock starts."""

    if TYPE_CHECKING:  # uvicorn's protocols and ours have them; declared here for the type checker only

        def _unset_keepalive_if_required(self) -> None: ...

        def _header_timed_out(self) -> None: ...

    def _answer_and_close(self, status: int) -> None:
        if self.transport is None or self._lingering or self.transport.is_closing():
            return
        code, detail = _ERRORS[status]
        if status == 431:
            detail = f"the request line and headers exceed {self.limits.max_header_bytes} bytes"
        body = json.dumps({"error": code, "detail": detail}).encode()
        head = (
            f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self._linger()

    def _linger(self) -> None:
        """Shut down our side, then read and drop the rest of the request until EOF or a bound."""
        self._lingering = True
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(self.limits.linger_seconds, self.transport.close)

    def eof_received(self) -> None:
        if self._lingering:
            self.transport.close()
        return None


class LocalH11Protocol(_ErrorAnswers, H11Protocol):
    """uvicorn's h11 protocol with header/body timeouts, a header size limit and readable error answers."""

    limits: ClassVar[HttpLimits] = HttpLimits.from_env()

    def _new_connection(self) -> None:
        self.conn = _LimitedConnection(self.limits.max_header_bytes)

    # -- timers ----------------------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > self.limits.linger_bytes:
                self.transport.abort()
            return
        super().data_received(data)
        if self._lingering or self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            if self._header_timer is None:  # a later request on a kept-alive connection has begun
                self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)
            return
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY:
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._answer_and_close(408)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.conn.their_state is not h11.SEND_BODY or cycle is None:
            return
        # The app stops waiting for the body (it sees a disconnect) and can no longer write.
        answered = cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._answer_and_close(408)

    # -- error answers ---------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this for every h11 error; answer with the status h11 suggests instead."""
        error = self.conn.last_error if isinstance(self.conn, _LimitedConnection) else None
        status = error.error_status_hint if error is not None else 400
        self._answer_and_close(status if status in _ERRORS else 400)

    def shutdown(self) -> None:
        if self._lingering:
            self.transport.close()
            return
        try:
            super().shutdown()
        except h11.LocalProtocolError:
            self.transport.close()


class LocalHttpToolsProtocol(_ErrorAnswers, HttpToolsProtocol):
    """uvicorn's httptools protocol with the same limits and answers as :class:`LocalH11Protocol`.

    httptools reports a header only once it is whole, so the head's size is checked twice: exactly
    when the head is complete (request line and headers, counted as h11's variant counts them), and
    while it is incomplete by the bytes received since the last complete head (a slow or endless
    header never completes).
    """

    limits: ClassVar[HttpLimits] = HttpLimits.from_env()

    def _new_connection(self) -> None:
        #: A request's head has begun and is not complete; its body has begun and is not complete.
        self._in_head = False
        self._in_body = False
        #: Bytes received since the last complete head (an upper bound of the head being received).
        self._head_bytes = 0
        self._head_too_large = False

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._dropped += len(data)
            if self._dropped > self.limits.linger_bytes:
                self.transport.abort()
            return
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._lingering or self.transport.is_closing():
            return
        if self._head_too_large or (self._in_head and self._head_bytes > self.limits.max_header_bytes):
            self._answer_and_close(431)

    # -- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._header_timer is None:  # a later request on a kept-alive connection has begun
            self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timed_out)

    def on_headers_complete(self) -> None:
        self._in_head, self._head_bytes = False, 0
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        size = len(self.parser.get_method()) + len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if size > self.limits.max_header_bytes:
            self._head_too_large = True  # answered once the parser returns; nothing reaches the app
            return
        super().on_headers_complete()
        self._in_body = True
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def on_body(self, body: bytes) -> None:
        if not self._head_too_large:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        if not self._head_too_large:
            super().on_message_complete()

    # -- timers ----------------------------------------------------------------------------

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self._in_body and (self.cycle is None or self.cycle.response_complete):
            self._answer_and_close(408)

    def _body_timed_out(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if not self._in_body or cycle is None:
            return
        # The app stops waiting for the body (it sees a disconnect) and can no longer write.
        answered = cycle.response_started
        cycle.disconnected = True
        cycle.message_event.set()
        if answered:
            self.transport.close()
        else:
            self._answer_and_close(408)

    # -- error answers ---------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this when httptools refuses the request: the API's JSON answer, then the linger."""
        self._answer_and_close(400)

    def shutdown(self) -> None:
        if self._lingering:
            self.transport.close()
            return
        super().shutdown()
