"""Callback receivers on 127.0.0.1, well-behaved and hostile, that record what each connection did.

Shared by the sender's unit tests, the end-to-end test against a real worker and ``bench/callbacks.py``.
Plain sockets rather than ``http.server``: a hostile receiver has to control every byte it sends and
when, and the tests need to know when the sender hung up (``Connection.closed_at``).

- ``healthy``: answers ``204`` at once.
- ``endless``: answers ``200`` with a chunked body that never ends, at ``rate`` bytes/s (``None``: as fast
  as the socket takes it).
- ``trickle``: answers one byte every ``interval`` s, forever (a status line and headers that never end).
- ``bighead``: answers a status line and a header that never ends, as fast as the socket takes it.
- ``silent``: reads the request and never answers.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["healthy", "endless", "trickle", "bighead", "silent"]

_CHUNK = 64 * 1024
_ENDLESS_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
#: What a trickling receiver sends, a byte at a time: a status line, then one header that never ends.
_TRICKLE = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1_000_000


@dataclass
class Request:
    """One request as received: when its last byte arrived (``time.time()``), its headers and body."""

    at: float
    head: dict[str, str]
    body: bytes


@dataclass
class Connection:
    """One connection from the sender: when it opened and closed (``time.monotonic()``), bytes sent to it."""

    opened_at: float
    closed_at: float | None = None
    sent: int = 0
    request: Request | None = None


@dataclass
class HostileReceiver:
    """``with HostileReceiver("trickle") as r: sender.submit(r.url, …)``: a receiver in its own threads."""

    mode: Mode = "healthy"
    #: ``endless``: bytes per second (``None``: unthrottled).
    rate: float | None = None
    #: ``trickle``: seconds between bytes.
    interval: float = 2.0
    connections: list[Connection] = field(default_factory=list)
    _listener: socket.socket | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _socks: list[socket.socket] = field(default_factory=list, repr=False)

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return [c.request for c in self.connections if c.request is not None]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for c in self.connections if c.closed_at is None)

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(c.sent for c in self.connections)

    def __enter__(self) -> HostileReceiver:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.1)
        threading.Thread(target=self._accept, name=f"receiver-{self.mode}", daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._listener is not None
        self._listener.close()
        with self._lock:
            for sock in self._socks:
                sock.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn = Connection(opened_at=time.monotonic())
            with self._lock:
                self.connections.append(conn)
                self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock, conn), daemon=True).start()

    def _serve(self, sock: socket.socket, conn: Connection) -> None:
        try:
            conn.request = _read_request(sock)
            if conn.request is not None:
                getattr(self, f"_answer_{self.mode}")(sock, conn)
        except OSError:
            pass  # the sender hung up (reset, broken pipe): that is what is being measured
        finally:
            conn.closed_at = time.monotonic()
            sock.close()

    def _answer_healthy(self, sock: socket.socket, conn: Connection) -> None:
        answer = b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        sock.sendall(answer)
        conn.sent += len(answer)

    def _answer_silent(self, sock: socket.socket, conn: Connection) -> None:
        _wait_for_close(sock, self._stop, None)

    def _answer_trickle(self, sock: socket.socket, conn: Connection) -> None:
        for i in range(len(_TRICKLE)):
            sock.sendall(_TRICKLE[i : i + 1])
            conn.sent += 1
            if _wait_for_close(sock, self._stop, self.interval):
                return

    def _answer_bighead(self, sock: socket.socket, conn: Connection) -> None:
        sock.sendall(_TRICKLE[:_CHUNK])
        conn.sent += _CHUNK
        while not self._stop.is_set():
            sock.sendall(b"a" * _CHUNK)
            conn.sent += _CHUNK

    def _answer_endless(self, sock: socket.socket, conn: Connection) -> None:
        sock.sendall(_ENDLESS_HEAD)
        chunk = b"%x\r\n" % _CHUNK + b"x" * _CHUNK + b"\r\n"
        started = time.monotonic()
        while not self._stop.is_set():
            sock.sendall(chunk)
            conn.sent += len(chunk)
            if self.rate is not None:
                ahead = conn.sent / self.rate - (time.monotonic() - started)
                if ahead > 0 and _wait_for_close(sock, self._stop, ahead):
                    return


def _read_request(sock: socket.socket) -> Request | None:
    """The request's head and ``Content-Length`` body; ``None`` when the peer closed before it ended."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            return None
        data += more
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    lines = head_bytes.decode("latin-1").split("\r\n")
    head = {"": lines[0]} | {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(head.get("content-length", "0"))
    while len(body) < length:
        more = sock.recv(65536)
        if not more:
            return None
        body += more
    return Request(time.time(), head, body)


def _wait_for_close(sock: socket.socket, stop: threading.Event, seconds: float | None) -> bool:
    """Wait ``seconds`` (``None``: until the peer closes); ``True`` as soon as the peer closed."""
    deadline = None if seconds is None else time.monotonic() + seconds
    while not stop.is_set():
        left = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
        if left <= 0:
            return False
        readable, _, _ = select.select([sock], [], [], left)
        if readable:
            try:
                if not sock.recv(65536):
                    return True
            except OSError:
                return True
    return True
