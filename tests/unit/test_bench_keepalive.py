"""The benchmark's concurrency-1 client (``bench.http_load.KeepAlive``): whole responses read back,
one connection kept, and a connection the server closed opened again."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from bench.http_load import KeepAlive, json_request


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections: ClassVar[list[object]] = []
    close_after: bool = False

    def setup(self) -> None:  # once per connection
        super().setup()
        type(self).connections.append(self.client_address)

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        answer = b'{"size": %d}' % len(body)
        status = 200 if body.startswith(b"{") else 400
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        if self.close_after:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(params=[False, True], ids=["kept", "closed-each-time"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"connections": [], "close_after": request.param})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_each_call_reads_one_whole_response(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    client = KeepAlive(url, json_request(url, "/predict", b"\xff" * 50_000))
    try:
        assert [client() for _ in range(5)] == [200] * 5
    finally:
        client.close()
    # One connection while the server keeps it; a new one after each close, and no call failed.
    assert len(handler.connections) == (5 if handler.close_after else 1)
    assert client.pending == b""


def test_the_status_is_the_servers(server: tuple[str, type[_Handler]]) -> None:
    url, _ = server
    bad = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    client = KeepAlive(url, bad)
    try:
        assert client() == 400
    finally:
        client.close()
