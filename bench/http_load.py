"""A deliberately tiny HTTP/1.1 load generator: prebuilt requests over keep-alive connections.

Every server is measured with the same client, and the client costs little CPU (no HTTP library
parsing per request), which matters on a 2-core machine where it shares the cores with the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    latencies: list[float]
    wall: float
    errors: int
    statuses: dict[int, int]

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def json_request(url: str, path: str, image: bytes, field: str = "image_data") -> bytes:
    """A POST of ``{field: base64(image)}`` to ``path`` as raw bytes."""
    body = json.dumps({field: base64.b64encode(image).decode()}).encode()
    host = urlsplit(url).netloc
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response off a keep-alive connection: its status and body (sized or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            parts.append(chunk[:-2])
        return status, b"".join(parts)
    return status, await reader.readexactly(length or 0)


async def _connection(
    url: str, request: bytes, next_index: Any, total: int, out: list[float], statuses: dict[int, int]
) -> int:
    parts = urlsplit(url)
    errors = 0
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while next_index() < total:
            t0 = time.perf_counter()
            writer.write(request)
            try:
                status, _ = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
                continue
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                out.append(time.perf_counter() - t0)
            else:
                errors += 1
    finally:
        writer.close()
    return errors


async def _run(url: str, request: bytes, concurrency: int, total: int) -> LoadResult:
    counter = iter(range(10**12))
    issued = [0]

    def next_index() -> int:
        issued[0] = next(counter)
        return issued[0]

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    t0 = time.perf_counter()
    errors = await asyncio.gather(
        *(_connection(url, request, next_index, total, latencies, statuses) for _ in range(concurrency))
    )
    return LoadResult(latencies, time.perf_counter() - t0, sum(errors), statuses)


def load(url: str, request: bytes, *, concurrency: int, total: int, warmup: int = 0) -> LoadResult:
    """``total`` requests, ``concurrency`` at a time (closed loop), after ``warmup`` unmeasured ones."""
    if warmup:
        asyncio.run(_run(url, request, min(concurrency, warmup), warmup))
    return asyncio.run(_run(url, request, concurrency, total))


class KeepAlive:
    """The same prebuilt request, one at a time, on one keep-alive connection (concurrency 1).

    As lean as the asynchronous generator: one ``sendall`` of the whole request (headers and body
    together, ``TCP_NODELAY``) and the status line and ``Content-Length`` read back, where
    ``http.client`` sends them apart and parses the headers with the ``email`` package (0.5-0.7 ms a
    request measured here, which would be counted as the server's). A connection the server closed
    while idle (its keep-alive timeout) is opened again once.
    """

    def __init__(self, url: str, request: bytes) -> None:
        parts = urlsplit(url)
        self.address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.request = request
        self.sock: socket.socket | None = None
        self.pending = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.pending = sock, b""
        return sock

    def __call__(self) -> int:
        """Send the request; returns the status once the whole response is read."""
        try:
            return self._once(self.sock or self._connect())
        except (ConnectionError, EOFError):
            self.close()
            return self._once(self._connect())

    def _once(self, sock: socket.socket) -> int:
        sock.sendall(self.request)
        data = self.pending
        while b"\r\n\r\n" not in data:
            data += self._recv(sock)
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length is None:
            raise RuntimeError(f"no Content-Length in {lines[0]!r} (this client reads sized bodies only)")
        while len(rest) < length:
            rest += self._recv(sock)
        self.pending = rest[length:]
        return int(lines[0].split()[1])

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def burst(url: str, request: bytes, n: int = 10) -> float:
    """The gibbs scenario: ``n`` requests sent at the same moment on fresh connections; wall seconds."""

    async def one() -> int:
        parts = urlsplit(url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            writer.write(request)
            status, _ = await read_response(reader)
            return status
        finally:
            writer.close()

    async def all_at_once() -> float:
        t0 = time.perf_counter()
        statuses = await asyncio.gather(*(one() for _ in range(n)))
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"burst statuses {statuses}")
        return time.perf_counter() - t0

    return asyncio.run(all_at_once())
