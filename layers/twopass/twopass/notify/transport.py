"""An httpx transport whose connections go to the address the SSRF guard checked, and nowhere else.

Checking a name and then letting the HTTP client look it up again leaves a gap: a DNS server that
answers a public address to the check and 127.0.0.1 to the connection (DNS rebinding) walks through.
Here the lookup happens once, inside the connection itself: the name is resolved, every answer is
checked (:func:`twopass.notify.guard.resolve_public`) and the socket is opened to one of those very
addresses. Everything else still uses the name: TLS sends it as SNI and verifies the certificate
against it, and the ``Host`` header carries it.

A receiver is not trusted to end its answer either. httpx's timeouts are per socket operation: a
receiver that sends one byte every few seconds, or an endless body, holds a request forever. With
``attempt_timeout`` and ``max_response_bytes`` every request gets a budget: one deadline for the
whole exchange (lookup, connect, TLS, request, status, headers and whatever of the body is read),
passed down as the timeout of each socket operation, and a cap on the bytes read from the socket.
Past either, the request fails (``httpx.TimeoutException``, ``httpx.RemoteProtocolError``).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

from twopass.notify.guard import Resolver, resolve_public


class _Budget:
    """One request's allowance: a deadline (monotonic) and the bytes it may still read."""

    def __init__(self, seconds: float | None, max_bytes: int | None) -> None:
        self.seconds = seconds
        self.deadline = None if seconds is None else time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.bytes_left = max_bytes

    def timeout(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
        """``timeout`` cut to what is left of the deadline; raises ``error`` once it has passed."""
        if self.deadline is None:
            return timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise error(f"the request took longer than its {self.seconds:g} s deadline")
        return left if timeout is None else min(timeout, left)

    def take(self, max_bytes: int) -> int:
        """How much the next read may ask for; raises once the cap is read."""
        if self.bytes_left is None:
            return max_bytes
        if self.bytes_left <= 0:
            raise httpcore.RemoteProtocolError(f"the response is longer than the {self.max_bytes} bytes read of it")
        return min(max_bytes, self.bytes_left)

    def count(self, read: int) -> None:
        if self.bytes_left is not None:
            self.bytes_left -= read


#: The budget of the request this thread is making (httpcore's sync pool does all its I/O in the
#: caller's thread, and a pooled connection may serve several requests: the stream asks each time).
_BUDGET: ContextVar[_Budget | None] = ContextVar("twopass_request_budget", default=None)


class _BudgetedStream(httpcore.NetworkStream):
    """A connection whose every read, write and handshake fits in the current request's budget."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        budget = _BUDGET.get()
        if budget is None:
            return self._stream.read(max_bytes, timeout)
        data = self._stream.read(budget.take(max_bytes), budget.timeout(timeout, httpcore.ReadTimeout))
        budget.count(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        budget = _BUDGET.get()
        self._stream.write(buffer, timeout if budget is None else budget.timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        # CPython's handshake loop keeps to the socket timeout in total, not per read.
        budget = _BUDGET.get()
        limit = timeout if budget is None else budget.timeout(timeout, httpcore.ConnectTimeout)
        return _BudgetedStream(self._stream.start_tls(ssl_context, server_hostname, limit))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def _within[T](budget: _Budget, fn: Callable[[], T], what: str) -> T:
    """``fn()``, given up on at the budget's deadline (``getaddrinfo`` takes no timeout of its own).

    The lookup goes on in its daemon thread until the resolver's own timeout; nothing waits for it.
    """
    outcome: Future[T] = Future()

    def run() -> None:
        try:
            outcome.set_result(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller waiting on the future
            outcome.set_exception(exc)

    threading.Thread(target=run, name="callback-lookup", daemon=True).start()
    try:
        return outcome.result(budget.timeout(None, httpcore.ConnectTimeout))
    except FutureTimeout:
        raise httpcore.ConnectTimeout(f"{what} took longer than the request's {budget.seconds:g} s deadline") from None


class GuardedNetworkBackend(httpcore.NetworkBackend):
    """Resolves and checks each host once per connection, then connects to a checked address."""

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        network_backend: httpcore.NetworkBackend | None = None,
    ) -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        self._backend = network_backend or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        budget = _BUDGET.get()

        def lookup() -> list[str]:
            return resolve_public(host, port, allow_private=self.allow_private, resolver=self.resolver)

        addresses = (
            lookup() if budget is None or budget.deadline is None else _within(budget, lookup, f"looking up {host!r}")
        )
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:
            limit = timeout if budget is None else budget.timeout(timeout, httpcore.ConnectTimeout)
            try:
                stream = self._backend.connect_tcp(
                    address, port, timeout=limit, local_address=local_address, socket_options=socket_options
                )
                return _BudgetedStream(stream)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None  # resolve_public never returns an empty list
        raise failure

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("callbacks never go to unix sockets")

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


#: httpcore's errors as the httpx errors callers catch (httpx's own transport maps them the same way).
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
}
_HTTPCORE_ERRORS = (httpcore.TimeoutException, httpcore.NetworkError, httpcore.ProtocolError)


def _httpx_error(exc: Exception) -> httpx.TransportError:
    cls = next((_HTTPX_ERRORS[c] for c in type(exc).__mro__ if c in _HTTPX_ERRORS), httpx.TransportError)
    return cls(str(exc))


class _ResponseStream(httpx.SyncByteStream):
    """The body, read under the budget of the request it answers (wherever the caller reads it)."""

    def __init__(self, stream: Iterable[bytes], budget: _Budget | None) -> None:
        self._stream = stream
        self._budget = budget

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self._stream)
        while True:
            token = _BUDGET.set(self._budget)
            try:
                chunk = next(chunks)
            except StopIteration:
                return
            except _HTTPCORE_ERRORS as exc:
                raise _httpx_error(exc) from exc
            finally:
                _BUDGET.reset(token)
            yield chunk

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


class PinnedTransport(httpx.BaseTransport):
    """``httpx.Client(transport=PinnedTransport(...))``: connections only to guard-checked addresses.

    No proxies (a proxy would do its own lookup) and no unix sockets. ``network_backend`` is the seam
    under the guard (tests put a loopback stand-in for the internet there). ``attempt_timeout`` (s)
    and ``max_response_bytes`` bound each request as a whole (see the module's docstring); ``None``
    leaves only httpx's per-operation timeouts.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
        network_backend: httpcore.NetworkBackend | None = None,
        max_connections: int = 16,
        attempt_timeout: float | None = None,
        max_response_bytes: int | None = None,
    ) -> None:
        self.attempt_timeout = attempt_timeout
        self.max_response_bytes = max_response_bytes
        # httpx's context: certifi's CA bundle (slim container images may have no system store), or
        # SSL_CERT_FILE / SSL_CERT_DIR when the operator sets them.
        context = httpx.create_ssl_context(verify=verify)
        self._pool = httpcore.ConnectionPool(
            ssl_context=context,
            max_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedNetworkBackend(
                allow_private=allow_private, resolver=resolver, network_backend=network_backend
            ),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)  # a sync client's requests always are
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        budget = None
        if self.attempt_timeout is not None or self.max_response_bytes is not None:
            budget = _Budget(self.attempt_timeout, self.max_response_bytes)
        token = _BUDGET.set(budget)
        try:
            response = self._pool.handle_request(core_request)
        except _HTTPCORE_ERRORS as exc:
            raise _httpx_error(exc) from exc
        finally:
            _BUDGET.reset(token)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream, budget),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()
