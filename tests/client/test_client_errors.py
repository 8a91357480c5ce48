"""Errors that say what to do: an answer from something that is not a twopass API, a missing or refused
key, nothing listening. The SDK through its transport seam; the CLI over real HTTP against stub servers on
loopback, checking each message is printed once.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from twopass import cli
from twopass.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    NotFoundError,
    NotTwopassError,
    ResponseError,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    TwopassError,
    hints,
)

REPO = Path(__file__).resolve().parents[2]
PHOTOS = REPO / "tests" / "data"
JOB_ID = "0123456789abcdef0123456789abcdef"
REMOTE = "https://abc123.execute-api.eu-west-1.amazonaws.com/Prod"
LOOPBACK = "http://127.0.0.1:3000"

#: Another web app's error page, as a dev server on the wrong port answers it.
HTML_500 = (
    "<!doctype html>\n<html lang=en>\n<title>Some Other App - Server Error</title>\n"
    "<h1>Internal Server Error</h1>\n<p>The server encountered an internal error.</p>\n"
)
FORBIDDEN = {"error": "forbidden", "detail": "missing or invalid x-api-key header"}
ROUTE_MISS = {"error": "not_found", "detail": "Not Found"}


def html(status: int, page: str = HTML_500) -> httpx.Response:
    return httpx.Response(status, text=page, headers={"content-type": "text/html; charset=utf-8"})


class Server:
    """Answers every request with ``answer`` and counts what it was asked."""

    def __init__(self, answer: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, httpx.Response):
            return httpx.Response(self.answer.status_code, headers=self.answer.headers, content=self.answer.content)
        return self.answer(request)


def client(server: Server, url: str = LOOPBACK, **kwargs: Any) -> Client:
    return Client(url, transport=httpx.MockTransport(server), sleep=lambda _: None, **kwargs)


# -- the SDK: not a twopass API ----------------------------------------------------------------------


def test_an_html_error_page_is_named_for_what_it_is_and_not_retried() -> None:
    server = Server(html(500))
    with client(server) as tp, pytest.raises(NotTwopassError) as info:
        tp.health()
    message = str(info.value)
    assert message.startswith(f"the server at {LOOPBACK} does not look like a twopass API (got 500 text/html: ")
    assert "an HTML page titled 'Some Other App - Server Error'" in message
    assert "check base_url (or TWOPASS_URL)" in message
    assert "<!doctype" not in message and "<h1>" not in message
    assert info.value.status == 500
    assert isinstance(info.value, ResponseError) and isinstance(info.value, TwopassError)
    # Another server's page will not change on a second try: the user hears at once.
    assert len(server.requests) == 1


def test_an_html_page_with_200_is_not_twopass_either() -> None:
    # A single-page app's dev server answers every path with its index.html.
    server = Server(html(200, "<html><head><title>Vite App</title></head><body></body></html>"))
    with client(server) as tp, pytest.raises(NotTwopassError) as info:
        tp.predict(b"\xff\xd8\xffimage")
    assert "(got 200 text/html: an HTML page titled 'Vite App')" in str(info.value)


def test_plain_text_and_other_json_are_described_briefly() -> None:
    with client(Server(httpx.Response(200, text="hello " * 100))) as tp, pytest.raises(NotTwopassError) as info:
        tp.health()
    got = info.value.got
    assert got.startswith("200 text/plain: 'hello hello") and got.endswith("…'") and len(got) < 120

    # Another JSON API: its 404 body is not twopass's {"error", "detail"}.
    with client(Server(httpx.Response(404, json={"detail": "Not Found"}))) as tp, pytest.raises(NotTwopassError):
        tp.job(JOB_ID)
    # 2xx JSON without twopass's fields.
    with client(Server(httpx.Response(200, json={"status": "UP"}))) as tp, pytest.raises(NotTwopassError) as info:
        tp.predict(b"\xff\xd8\xffimage")
    assert "200 JSON that is not a twopass answer: POST /predict" in str(info.value)


def test_a_redirect_says_where_to() -> None:
    server = Server(httpx.Response(301, headers={"location": "https://api.example.com/health"}))
    with client(server, "http://api.example.com") as tp, pytest.raises(NotTwopassError) as info:
        tp.health()
    assert "(got 301 redirect to https://api.example.com/health)" in str(info.value)


def test_a_404_on_a_route_every_twopass_api_has_means_the_base_path_is_wrong() -> None:
    server = Server(httpx.Response(404, json=ROUTE_MISS))
    with client(server, "http://127.0.0.1:3000/api") as tp:
        with pytest.raises(NotTwopassError) as info:
            tp.health()
        assert "does not look like a twopass API (got 404 on GET /api/health: Not Found)" in str(info.value)
        assert "it is the API's root, e.g. http://127.0.0.1:3000 locally" in str(info.value)
        with pytest.raises(NotTwopassError):
            tp.predict(b"\xff\xd8\xffimage")
        # The job route's own 404 is twopass's "no such job"; a route miss there still reads "Not Found".
        with pytest.raises(NotTwopassError):
            tp.job(JOB_ID)
    no_job = {"error": "not_found", "detail": f"no job '{JOB_ID}' (unknown or expired)"}
    with client(Server(httpx.Response(404, json=no_job))) as tp, pytest.raises(NotFoundError) as missing:
        tp.job(JOB_ID)
    assert str(missing.value) == f"404 not_found: no job '{JOB_ID}' (unknown or expired)"
    assert missing.value.hint is None


def test_api_gateways_missing_token_means_a_wrong_path_not_a_wrong_key() -> None:
    # API Gateway answers a path (or stage) it has no route for with this 403, key or no key.
    server = Server(httpx.Response(403, json={"message": "Missing Authentication Token"}))
    with client(server, REMOTE.removesuffix("/Prod"), api_key="k") as tp, pytest.raises(NotTwopassError) as info:
        tp.health()
    assert "Missing Authentication Token" in str(info.value)
    assert "https://<api-id>.execute-api.<region>.amazonaws.com/Prod on AWS" in str(info.value)


# -- the SDK: keys, outages --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [LOOPBACK, "http://localhost:3100", REMOTE])
@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_refused_key_says_how_to_send_one(url: str, key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOPASS_API_KEY", raising=False)
    server = Server(httpx.Response(403, json=FORBIDDEN))
    with client(server, url, api_key=key) as tp, pytest.raises(AuthenticationError) as info:
        tp.predict(b"\xff\xd8\xffimage")
    message = str(info.value)
    assert message.startswith("403 forbidden: missing or invalid x-api-key header; ")
    if key is None:
        assert "no API key was sent: pass api_key= or set TWOPASS_API_KEY" in message
    else:
        assert "the API key was refused: check api_key= (or TWOPASS_API_KEY)" in message
    assert ("the local stack started by `make run` takes local-dev-key" in message) == (url != REMOTE)
    # The server's own words stay where they were.
    assert (info.value.status, info.value.code, info.value.detail) == (403, "forbidden", FORBIDDEN["detail"])
    assert len(server.requests) == 1


def test_api_gateways_own_403_gets_the_same_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOPASS_API_KEY", raising=False)  # the shared stack's fixture may have set it
    server = Server(httpx.Response(403, json={"message": "Forbidden"}))
    with client(server, REMOTE) as tp, pytest.raises(AuthenticationError) as info:
        tp.health_all()
    assert str(info.value).startswith("403 http_403: Forbidden; no API key was sent")


def test_nothing_listening_says_whether_to_start_the_local_stack() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with client(Server(refuse), retries=0) as tp, pytest.raises(TransportError) as info:
        tp.health()
    assert "cannot reach twopass at http://127.0.0.1:3000: ConnectError" in str(info.value)
    assert "is the local stack running? `make run` starts it on http://127.0.0.1:3000" in str(info.value)
    with client(Server(refuse), REMOTE, retries=0) as tp, pytest.raises(TransportError) as info:
        tp.health()
    assert "make run" not in str(info.value)
    assert "check base_url (or TWOPASS_URL)" in str(info.value)


def test_a_proxys_html_503_is_still_retried_as_an_outage() -> None:
    # A load balancer in front of twopass may say 502/503/504 in HTML: an outage worth retrying,
    # reported as one, with a word that it was not twopass talking.
    server = Server(html(503, "<html><title>503 Service Temporarily Unavailable</title></html>"))
    with client(server) as tp, pytest.raises(ServiceUnavailableError) as info:
        tp.health()
    assert len(server.requests) == 4
    assert info.value.detail == "an HTML page titled '503 Service Temporarily Unavailable'"
    assert "the answer is not twopass's JSON: if this persists, check base_url" in str(info.value)


def test_a_bare_500_is_a_server_error_not_a_wrong_url() -> None:
    # What uvicorn says when an app fails outside its handlers: plain text, no JSON. Could be twopass.
    server = Server(httpx.Response(500, text="Internal Server Error"))
    with client(server) as tp, pytest.raises(ServerError) as info:
        tp.health()
    assert not isinstance(info.value, NotTwopassError)
    assert len(server.requests) == 4
    assert info.value.detail == "Internal Server Error"


def test_the_async_client_gives_the_same_messages() -> None:
    async def run(answer: httpx.Response) -> TwopassError:
        server = Server(answer)
        async with AsyncClient(LOOPBACK, transport=httpx.MockTransport(server), retries=0) as tp:
            try:
                await tp.health_all()
            except TwopassError as exc:
                return exc
        raise AssertionError("no error")

    not_twopass = asyncio.run(run(html(500)))
    assert isinstance(not_twopass, NotTwopassError)
    assert "an HTML page titled 'Some Other App - Server Error'" in str(not_twopass)
    auth = asyncio.run(run(httpx.Response(403, json=FORBIDDEN)))
    assert isinstance(auth, AuthenticationError)
    assert "TWOPASS_API_KEY" in str(auth) and "local-dev-key" in str(auth)


def test_the_hints_name_the_local_stacks_real_defaults() -> None:
    from twopass.local.stack import DEFAULT_API_KEY, LocalStack

    # The client cannot import the local stack (server packages), so it repeats these two values.
    assert hints.LOCAL_API_KEY == DEFAULT_API_KEY
    assert f"http://{LocalStack.host}:{LocalStack.api_port}" == hints.LOCAL_URL


# -- the CLI over real HTTP ---------------------------------------------------------------------------


@dataclass
class Stub:
    """An HTTP server on loopback answering ``answer(method, path, headers)`` -> (status, headers, body)."""

    answer: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]
    seen: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def stub() -> Iterator[Callable[..., Stub]]:
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str, str, dict[str, str]], tuple[int, dict[str, str], bytes]]) -> Stub:
        state = Stub(answer)

        class Handler(BaseHTTPRequestHandler):
            def _reply(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                state.seen.append((self.command, self.path))
                status, headers, body = state.answer(self.command, self.path, dict(self.headers.items()))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply()

            def do_POST(self) -> None:
                self._reply()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output to what the CLI prints

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        state.url = f"http://127.0.0.1:{server.server_address[1]}"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def other_app(_method: str, _path: str, _headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    return 500, {"content-type": "text/html; charset=utf-8"}, HTML_500.encode()


def twopass_with_a_key(method: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """The twopass API's answers where they matter here: /health open, the rest behind x-api-key."""
    json_type = {"content-type": "application/json"}
    if path == "/health":
        return 200, json_type, b'{"health":"ok"}'
    if headers.get("x-api-key", headers.get("X-Api-Key")) != "local-dev-key":
        return 403, json_type, json.dumps(FORBIDDEN).encode()
    if not (path.startswith("/job/") or path == "/predict"):
        return 404, json_type, json.dumps(ROUTE_MISS).encode()
    return 404, json_type, json.dumps({"error": "not_found", "detail": "no job (unknown or expired)"}).encode()


def test_cli_on_the_wrong_port_says_so_once(
    stub: Callable[..., Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWOPASS_API_KEY", "local-dev-key")
    server = stub(other_app)
    assert cli.main(["--url", server.url, "health"]) == cli.EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"twopass: error: the server at {server.url} does not look like a twopass API (got 500 text/html: an HTML "
        "page titled 'Some Other App - Server Error'); check --url (or TWOPASS_URL): it is the API's root, "
        "e.g. http://127.0.0.1:3000 locally, https://<api-id>.execute-api.<region>.amazonaws.com/Prod on AWS\n"
    )
    assert server.seen == [("GET", "/health")]  # not retried

    assert cli.main(["--url", server.url, "predict", str(PHOTOS), "--wait"]) == cli.EXIT_UNAVAILABLE
    out, err = capsys.readouterr()
    assert (out + err).count("does not look like a twopass API") == 1
    assert "<!doctype" not in out + err
    assert "twopass: error: the server at" in err


def test_cli_without_a_key_names_the_option_the_variable_and_the_local_key(
    stub: Callable[..., Stub], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWOPASS_API_KEY", raising=False)
    server = stub(twopass_with_a_key)
    code = cli.main(["--url", server.url, "predict", str(PHOTOS), "--wait", "--concurrency", "3"])
    assert code == cli.EXIT_AUTH
    out, err = capsys.readouterr()
    error_lines = [line for line in err.splitlines() if line.startswith("twopass: error:")]
    assert error_lines == [
        "twopass: error: 403 forbidden: missing or invalid x-api-key header; no API key was sent: pass --api-key "
        "or set TWOPASS_API_KEY (the local stack started by `make run` takes local-dev-key)"
    ]
    assert "forbidden" not in out  # the table says which files it stopped, not the message again
    statuses = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}
    assert set(statuses.values()) <= {"error", "skipped"} and "error" in statuses.values()

    code = cli.main(["--url", server.url, "--api-key", "wrong", "job", JOB_ID])
    assert code == cli.EXIT_AUTH
    assert "the API key was refused: check --api-key (or TWOPASS_API_KEY)" in capsys.readouterr().err

    # --json: the rows keep their error for scripts; stderr still says it once.
    assert cli.main(["--url", server.url, "predict", str(PHOTOS / "chelsea.jpg"), "--json"]) == cli.EXIT_AUTH
    out, err = capsys.readouterr()
    assert json.loads(out)["error"].startswith("403 forbidden: ")
    assert err.count("twopass: error:") == 1


def test_cli_with_an_extra_path_in_the_url_says_to_check_it(
    stub: Callable[..., Stub], capsys: pytest.CaptureFixture[str]
) -> None:
    server = stub(twopass_with_a_key)
    base = f"{server.url}/v1"
    assert cli.main(["--url", base, "--api-key", "local-dev-key", "job", JOB_ID]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith(
        f"twopass: error: the server at {base} does not look like a twopass API (got 404 on GET /v1/job/{JOB_ID}: "
        "Not Found); check --url (or TWOPASS_URL)"
    )
    assert err.count("\n") == 1
    assert cli.main(["--url", base, "--api-key", "local-dev-key", "health", "--all"]) == cli.EXIT_UNAVAILABLE
    assert "(got 404 on GET /v1/health/all: Not Found)" in capsys.readouterr().err
    # The right URL with the right key: the job is simply unknown.
    assert cli.main(["--url", server.url, "--api-key", "local-dev-key", "job", JOB_ID]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == "twopass: error: no job (unknown or expired)\n"


def test_cli_with_nothing_listening_points_at_make_run(capsys: pytest.CaptureFixture[str]) -> None:
    from twopass.local.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["--url", url, "--retries", "0", "predict", str(PHOTOS)]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert err.count("twopass: error:") == 1
    assert f"cannot reach twopass at {url}: ConnectError" in err
    assert "is the local stack running? `make run` starts it on http://127.0.0.1:3000; else check --url" in err
