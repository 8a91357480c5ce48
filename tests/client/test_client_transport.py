"""The client SDK against scripted servers: ``httpx.MockTransport`` is the seam, so retry, backoff,
polling and error mapping are checked exactly, with no sockets and no real sleeping.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from twopass.client import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    EventLoopError,
    InvalidInputError,
    JobFailedError,
    JobHandle,
    JobStatus,
    NotFoundError,
    Prediction,
    RateLimitedError,
    ResponseError,
    RetryPolicy,
    ServerError,
    ServiceUnavailableError,
    TransportError,
    TwopassError,
    WaitTimeoutError,
)
from twopass.client._base import parse_retry_after

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "tests" / "data" / "chelsea.jpg"
URL = "http://twopass.test"
JOB_ID = "0123456789abcdef0123456789abcdef"

PREDICT_BODY: dict[str, Any] = {
    "job_id": JOB_ID,
    "efficientnet-lite0": "Egyptian cat",
    "status": "queued",
    "fast": {
        "model": "efficientnet-lite0",
        "label": "Egyptian cat",
        "top_k": [
            {"label": "Egyptian cat", "probability": 0.58, "class_id": 285},
            {"label": "tabby", "probability": 0.2, "class_id": 281},
        ],
        "inference_ms": 7.5,
    },
    "status_url": f"/job/{JOB_ID}",
}


def job_body(status: str, *, label: str | None = None, error: str | None = None) -> dict[str, Any]:
    slow = None
    if status == "succeeded":
        slow = {
            "model": "efficientnet-lite2",
            "label": label or "tabby",
            "top_k": [{"label": label or "tabby", "probability": 0.7, "class_id": 281}],
            "inference_ms": 40.0,
            "batch_size": 1,
        }
    return {
        JOB_ID: {"prediction": slow["label"] if slow else None},
        "job_id": JOB_ID,
        "status": status,
        "created_at": "2025-01-01T00:00:00.000Z",
        "updated_at": "2025-01-01T00:00:01.000Z",
        "started_at": "2025-01-01T00:00:00.500Z" if status != "queued" else None,
        "finished_at": "2025-01-01T00:00:01.000Z" if status in ("succeeded", "failed") else None,
        "attempts": 1,
        "slow": slow,
        "error": error,
    }


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": code, "detail": detail}, headers=headers)


Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A server that answers with ``steps`` in order (the last one repeats) and records requests."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if isinstance(step, Exception):
            if isinstance(step, httpx.RequestError):
                step.request = request
            raise step
        if isinstance(step, httpx.Response):
            # A fresh copy each time: a Response is bound to one request.
            return httpx.Response(step.status_code, headers=step.headers, content=step.content)
        return step(request)

    @property
    def count(self) -> int:
        return len(self.requests)


class TopRandom(random.Random):
    """Jitter that always draws the top of its range, so backoff sleeps are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


class FakeClock:
    """A monotonic clock that only sleeping moves."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def make_client(script: Script, clock: FakeClock | None = None, **kwargs: Any) -> Client:
    clock = clock or FakeClock()
    return Client(URL, transport=httpx.MockTransport(script), sleep=clock.sleep, clock=clock, rng=TopRandom(), **kwargs)


def make_async_client(script: Script, clock: FakeClock | None = None, **kwargs: Any) -> AsyncClient:
    clock = clock or FakeClock()
    return AsyncClient(
        URL, transport=httpx.MockTransport(script), sleep=clock.asleep, clock=clock, rng=TopRandom(), **kwargs
    )


# -- retries ---------------------------------------------------------------------------------------


def test_503_twice_then_200_succeeds_after_three_attempts() -> None:
    script = Script(
        error(503, "enqueue_failed", "queue down"),
        error(503, "enqueue_failed", "queue down"),
        httpx.Response(200, json=PREDICT_BODY),
    )
    clock = FakeClock()
    with make_client(script, clock) as client:
        prediction = client.predict(b"\xff\xd8\xff fake jpeg")
    assert script.count == 3
    assert prediction.label == "Egyptian cat"
    assert prediction.job == JobHandle(JOB_ID)
    assert len(clock.sleeps) == 2
    # One request id for every attempt of one call, so the server's logs show a single call.
    assert len({r.headers["x-request-id"] for r in script.requests}) == 1


def test_retry_after_is_honoured_over_backoff() -> None:
    script = Script(
        error(503, "dependency_unavailable", "table down", {"Retry-After": "2"}),
        error(429, "throttled", "slow down", {"Retry-After": "3.5"}),
        httpx.Response(200, json={"health": "ok"}),
    )
    clock = FakeClock()
    with make_client(script, clock) as client:
        assert client.health().ok
    assert clock.sleeps == [2.0, 3.5]


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    script = Script(httpx.Response(502, text="bad gateway"))
    clock = FakeClock()
    policy = RetryPolicy(retries=6, backoff=0.5, max_backoff=8.0)
    with make_client(script, clock, retry_policy=policy) as client, pytest.raises(ServiceUnavailableError) as info:
        client.health()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]  # the top of each jitter range
    assert info.value.attempts == 7
    assert info.value.status == 502
    assert info.value.detail == "bad gateway"

    # Full jitter: the draw is uniform over [0, cap], so sleeps can be anywhere down to zero.
    draws: list[tuple[float, float]] = []

    class Recording(random.Random):
        def uniform(self, a: float, b: float) -> float:
            draws.append((a, b))
            return a

    client = Client(URL, transport=httpx.MockTransport(Script(httpx.Response(500))), sleep=lambda _: None)
    client._rng = Recording()
    with client, pytest.raises(ServerError):
        client.health()
    assert draws == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0)]


def test_retry_after_beyond_the_cap_is_left_to_the_caller() -> None:
    script = Script(error(429, "throttled", "come back in an hour", {"Retry-After": "3600"}))
    clock = FakeClock()
    with make_client(script, clock) as client, pytest.raises(RateLimitedError) as info:
        client.health()
    assert script.count == 1
    assert clock.sleeps == []
    assert info.value.retry_after == 3600.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (413, BadRequestError),
        (415, BadRequestError),
        (422, BadRequestError),
    ],
)
def test_4xx_is_never_retried(status: int, kind: type[ApiError]) -> None:
    script = Script(error(status, "some_code", "what was wrong"))
    clock = FakeClock()
    with make_client(script, clock) as client, pytest.raises(kind) as info:
        # A 404 is twopass's own answer only on the job route; elsewhere it is a route miss (below).
        client.job(JOB_ID) if status == 404 else client.predict(b"not an image")
    assert script.count == 1
    assert clock.sleeps == []
    assert (info.value.status, info.value.code, info.value.detail) == (status, "some_code", "what was wrong")
    assert isinstance(info.value, TwopassError)


def test_429_is_retried() -> None:
    script = Script(httpx.Response(429), httpx.Response(429), httpx.Response(200, json=job_body("queued")))
    clock = FakeClock()
    with make_client(script, clock) as client:
        assert client.job(JOB_ID).status is JobStatus.QUEUED
    assert script.count == 3
    assert clock.sleeps == [0.5, 1.0]


def test_connection_errors_are_retried_then_raise_transport_error() -> None:
    script = Script(httpx.ConnectError("connection refused"))
    clock = FakeClock()
    with make_client(script, clock, retries=2) as client, pytest.raises(TransportError) as info:
        client.health()
    assert script.count == 3
    assert len(clock.sleeps) == 2
    assert info.value.attempts == 3
    assert "connection refused" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_connection_error_then_success() -> None:
    script = Script(httpx.ConnectTimeout("slow"), httpx.Response(200, json=PREDICT_BODY))
    with make_client(script) as client:
        assert client.predict(b"img").job_id == JOB_ID
    assert script.count == 2


def test_read_timeout_retries_get_but_not_post() -> None:
    # The POST may have queued a job before the answer was lost: repeating it would queue another.
    script = Script(httpx.ReadTimeout("no answer"), httpx.Response(200, json=PREDICT_BODY))
    with make_client(script) as client, pytest.raises(TransportError):
        client.predict(b"img")
    assert script.count == 1

    script = Script(httpx.ReadTimeout("no answer"), httpx.Response(200, json=job_body("running")))
    with make_client(script) as client:
        assert client.job(JOB_ID).status is JobStatus.RUNNING
    assert script.count == 2


def test_retries_zero_means_one_attempt() -> None:
    script = Script(httpx.Response(503))
    with make_client(script, retries=0) as client, pytest.raises(ServiceUnavailableError):
        client.health()
    assert script.count == 1


def test_parse_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now.timestamp()) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now.timestamp()) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- errors and bodies -------------------------------------------------------------------------------


def test_gateway_style_error_body_is_understood() -> None:
    # API Gateway refuses a missing key itself, with {"message": …} rather than twopass's shape.
    script = Script(httpx.Response(403, json={"message": "Forbidden"}))
    with make_client(script) as client, pytest.raises(AuthenticationError) as info:
        client.job(JOB_ID)
    assert info.value.detail == "Forbidden"
    assert info.value.code == "http_403"


def test_a_2xx_body_off_contract_is_a_response_error() -> None:
    script = Script(httpx.Response(200, json={"job_id": JOB_ID}))
    with make_client(script) as client, pytest.raises(ResponseError):
        client.predict(b"img")
    script = Script(httpx.Response(200, text="<html>proxy login</html>"))
    with make_client(script) as client, pytest.raises(ResponseError):
        client.health()


def test_job_result_is_typed() -> None:
    script = Script(httpx.Response(200, json=job_body("succeeded", label="tiger cat")))
    with make_client(script) as client:
        result = client.job(JobHandle(JOB_ID))
    assert result.succeeded
    assert result.done
    assert not result.failed
    assert result.label == "tiger cat"
    assert result.probability == 0.7
    assert result.slow is not None
    assert result.slow.batch_size == 1
    assert result.finished_at == datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert result.raw[JOB_ID] == {"prediction": "tiger cat"}
    assert script.requests[0].url.path == f"/job/{JOB_ID}"


def test_job_ids_are_escaped_into_the_path() -> None:
    script = Script(error(404, "not_found", "no job"))
    with make_client(script) as client, pytest.raises(NotFoundError):
        client.job("../health")
    assert script.requests[0].url.raw_path == b"/job/..%2Fhealth"


def test_base_url_path_prefix_is_kept() -> None:
    # An API Gateway stage (…/Prod) is part of every endpoint's path.
    script = Script(httpx.Response(200, json={"health": "ok"}))
    client = Client(f"{URL}/Prod/", transport=httpx.MockTransport(script))
    with client:
        client.health()
    assert str(script.requests[0].url) == f"{URL}/Prod/health"


# -- wait ----------------------------------------------------------------------------------------------


def test_wait_polls_with_capped_backoff_until_done() -> None:
    script = Script(*(httpx.Response(200, json=job_body(s)) for s in ["queued"] * 5 + ["running", "succeeded"]))
    clock = FakeClock()
    with make_client(script, clock) as client:
        result = client.wait(JOB_ID, timeout=60, poll_interval=0.5, max_interval=4.0)
    assert result.label == "tabby"
    assert script.count == 7
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_wait_times_out() -> None:
    script = Script(httpx.Response(200, json=job_body("running")))
    clock = FakeClock()
    with make_client(script, clock) as client, pytest.raises(WaitTimeoutError) as info:
        client.wait(JOB_ID, timeout=10, poll_interval=1, max_interval=4)
    assert info.value.job_id == JOB_ID
    assert info.value.last is not None
    assert info.value.last.status is JobStatus.RUNNING
    # Sleeps never run past the deadline, and the last poll happens right on it.
    assert clock.sleeps == [1.0, 2.0, 4.0, 3.0]
    assert script.count == 5
    assert isinstance(info.value, TimeoutError)


def test_wait_on_a_failed_job_raises_unless_told_not_to() -> None:
    script = Script(httpx.Response(200, json=job_body("failed", error="InvalidImageError: truncated")))
    with make_client(script) as client:
        with pytest.raises(JobFailedError) as info:
            client.wait(JOB_ID)
        assert "truncated" in str(info.value)
        assert info.value.result.failed
        result = client.wait(JOB_ID, raise_on_failure=False)
    assert result.status is JobStatus.FAILED
    assert result.error == "InvalidImageError: truncated"


def test_wait_accepts_a_prediction_and_predict_and_wait_chains() -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY), httpx.Response(200, json=job_body("succeeded")))
    with make_client(script) as client:
        result = client.predict_and_wait(b"\xff\xd8\xffimg", timeout=5)
    assert result.job_id == JOB_ID
    assert [r.method for r in script.requests] == ["POST", "GET"]

    prediction = Prediction.from_json(PREDICT_BODY)
    script = Script(httpx.Response(200, json=job_body("succeeded")))
    with make_client(script) as client:
        assert client.wait(prediction).succeeded
    with make_client(script) as client, pytest.raises(InvalidInputError):
        client.wait(42)  # type: ignore[arg-type]


# -- image input -------------------------------------------------------------------------------------


def test_every_image_form_sends_the_same_bytes(tmp_path: Path) -> None:
    data = PHOTO.read_bytes()
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    with make_client(script) as client, PHOTO.open("rb") as fh:
        client.predict(PHOTO)
        client.predict(str(PHOTO))
        client.predict(data)
        client.predict(bytearray(data))
        client.predict(memoryview(data))
        client.predict(fh)
        client.predict(io.BytesIO(data))
    assert all(r.content == data for r in script.requests)
    assert {r.headers["content-type"] for r in script.requests} == {"image/jpeg"}
    assert {r.url.path for r in script.requests} == {"/predict"}


def test_a_pil_image_is_sent_encoded() -> None:
    pil = pytest.importorskip("PIL.Image")
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    made = pil.new("RGB", (8, 8), (200, 30, 40))
    opened = pil.open(PHOTO)
    with make_client(script) as client:
        client.predict(made)
        client.predict(opened)
    png, jpeg = (r.content for r in script.requests)
    # An in-memory image goes as lossless PNG: same pixels back.
    assert script.requests[0].headers["content-type"] == "image/png"
    assert pil.open(io.BytesIO(png)).tobytes() == made.tobytes()
    # An opened JPEG stays a JPEG of the same size (not a PNG several times larger).
    assert script.requests[1].headers["content-type"] == "image/jpeg"
    assert pil.open(io.BytesIO(jpeg)).size == opened.size
    buf = io.BytesIO()
    made.save(buf, format="PNG")
    assert png == buf.getvalue()


def test_bad_image_inputs_are_refused_before_sending(tmp_path: Path) -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    text_file = tmp_path / "x.txt"
    text_file.write_text("hello")
    with make_client(script) as client:
        with pytest.raises(InvalidInputError, match="text mode"), text_file.open() as fh:
            client.predict(fh)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="empty"):
            client.predict(b"")
        with pytest.raises(InvalidInputError, match="cannot send"):
            client.predict(12345)  # type: ignore[arg-type]
        with pytest.raises(FileNotFoundError):
            client.predict(tmp_path / "missing.jpg")
    assert script.count == 0


# -- configuration -------------------------------------------------------------------------------------


def test_api_key_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TWOPASS_API_KEY", raising=False)
    script = Script(httpx.Response(200, json={"health": "ok"}))
    with Client(URL, api_key="s3cret", transport=httpx.MockTransport(script)) as client:
        client.health()
        assert "s3cret" not in repr(client)
    with Client(URL, transport=httpx.MockTransport(script)) as client:
        client.health()
    assert script.requests[0].headers["x-api-key"] == "s3cret"
    assert "x-api-key" not in script.requests[1].headers


def test_url_and_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWOPASS_URL", "http://from-env.test:8080/")
    monkeypatch.setenv("TWOPASS_API_KEY", "env-key")
    script = Script(httpx.Response(200, json={"health": "ok"}))
    with Client(transport=httpx.MockTransport(script)) as client:
        client.health()
    assert str(script.requests[0].url) == "http://from-env.test:8080/health"
    assert script.requests[0].headers["x-api-key"] == "env-key"


# -- event loops ---------------------------------------------------------------------------------------


def test_sync_client_refuses_to_block_a_running_loop() -> None:
    script = Script(httpx.Response(200, json={"health": "ok"}))

    async def inside_a_loop() -> None:
        with make_client(script) as client:
            client.health()

    with pytest.raises(EventLoopError, match="AsyncClient"):
        asyncio.run(inside_a_loop())
    assert script.count == 0


def test_async_client_works_in_a_running_loop() -> None:
    script = Script(
        error(503, "enqueue_failed", "queue down", {"Retry-After": "1"}),
        httpx.Response(200, json=PREDICT_BODY),
        httpx.Response(200, json=job_body("running")),
        httpx.Response(200, json=job_body("succeeded", label="Egyptian cat")),
    )
    clock = FakeClock()

    async def notebook_cell() -> tuple[Prediction, Any]:
        async with make_async_client(script, clock) as client:
            prediction = await client.predict(PHOTO)
            return prediction, await client.wait(prediction, timeout=30)

    prediction, result = asyncio.run(notebook_cell())
    assert prediction.label == "Egyptian cat"
    assert result.label == "Egyptian cat"
    assert clock.sleeps == [1.0, 0.5]
    assert script.requests[1].content == PHOTO.read_bytes()


def test_async_client_retries_gives_up_and_times_out_like_the_sync_one() -> None:
    async def scenario() -> None:
        script = Script(httpx.ConnectError("refused"))
        async with make_async_client(script, retries=1) as client:
            with pytest.raises(TransportError):
                await client.health()
        assert script.count == 2
        script = Script(error(404, "not_found", "no job"))
        async with make_async_client(script) as client:
            with pytest.raises(NotFoundError):
                await client.job(JOB_ID)
        assert script.count == 1
        clock = FakeClock()
        script = Script(httpx.Response(200, json=job_body("queued")))
        async with make_async_client(script, clock) as client:
            with pytest.raises(WaitTimeoutError):
                await client.wait(JOB_ID, timeout=3, poll_interval=1, max_interval=1)
        assert clock.sleeps == [1.0, 1.0, 1.0]
        script = Script(httpx.Response(200, json=job_body("failed", error="boom")))
        async with make_async_client(script) as client:
            with pytest.raises(JobFailedError):
                await client.wait(JOB_ID)

    asyncio.run(scenario())


def test_async_client_gathers_concurrently() -> None:
    async def scenario() -> list[str]:
        script = Script(httpx.Response(200, json=PREDICT_BODY))
        async with make_async_client(script) as client:
            predictions = await asyncio.gather(*(client.predict(b"\xff\xd8\xff%d" % i) for i in range(5)))
        return [p.job_id for p in predictions]

    assert asyncio.run(scenario()) == [JOB_ID] * 5


# -- the CLI without a server ------------------------------------------------------------------------


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from twopass.cli import main

    assert main(["predict", str(tmp_path / "missing")]) == 2
    assert main(["predict", str(tmp_path)]) == 2  # a folder with no images
    assert main(["predict", "--concurrency", "0", str(PHOTO)]) == 2
    assert main([]) == 2
    assert main(["bogus"]) == 2
    assert main(["--version"]) == 0
    assert "twopass 0.1.0" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "exit codes:" in capsys.readouterr().out


def test_cli_collects_images_from_folders(tmp_path: Path) -> None:
    from twopass.cli.predict import collect_images

    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt", ".hidden/d.jpg", "sub/.e.jpg"):
        (tmp_path / name).write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    found = collect_images([tmp_path, explicit])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.png", "b.JPG", "sub/c.webp", "notes.txt"]


def test_cli_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    from twopass.cli import main
    from twopass.local.stack import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--retries", "0", "health"]) == 3
    assert main(["--url", url, "--retries", "0", "predict", str(PHOTO), "--json"]) == 3
    assert main(["job", JOB_ID, "--url", url, "--retries", "0"]) == 3  # global options after the command too
    assert "cannot reach twopass" in capsys.readouterr().err


# -- import hygiene -----------------------------------------------------------------------------------


def test_client_and_cli_import_nothing_heavy() -> None:
    # A client app installs httpx alone: the SDK and the CLI must not reach for the server's stack.
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        import twopass.client, twopass.cli
        after_import = sorted(sys.modules)
        with contextlib.redirect_stdout(io.StringIO()):
            code = twopass.cli.main(["--help"])
        print(json.dumps({"import": after_import, "help": sorted(sys.modules), "code": code}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO / "layers" / "twopass")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = json.loads(out.stdout)
    assert loaded["code"] == 0
    heavy = ("onnxruntime", "boto3", "botocore", "numpy", "PIL", "pydantic", "fastapi", "starlette", "moto")
    for phase in ("import", "help"):
        assert not [m for m in loaded[phase] if m.split(".")[0] in heavy], phase


def test_cli_exit_codes_from_answers(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import functools

    import twopass.cli as cli
    from twopass.cli import common

    keys: list[str | None] = []
    job_status = "failed"

    def server(request: httpx.Request) -> httpx.Response:
        keys.append(request.headers.get("x-api-key"))
        if request.headers.get("x-api-key") == "wrong":
            return error(401, "unauthorized", "the API key is not valid")
        if request.method == "POST":
            return httpx.Response(200, json=PREDICT_BODY)
        return httpx.Response(200, json=job_body(job_status, error="boom"))

    transport = httpx.MockTransport(server)
    monkeypatch.setattr(common, "CliClient", functools.partial(common.CliClient, transport=transport))
    monkeypatch.setattr(common, "CliAsyncClient", functools.partial(common.CliAsyncClient, transport=transport))
    monkeypatch.delenv("TWOPASS_API_KEY", raising=False)

    assert cli.main(["--api-key", "wrong", "health", "--all"]) == 5
    monkeypatch.setenv("TWOPASS_API_KEY", "wrong")
    assert cli.main(["predict", str(PHOTO), "--concurrency", "1"]) == 5
    assert keys == ["wrong", "wrong"]
    assert "the API key is not valid" in capsys.readouterr().err

    monkeypatch.setenv("TWOPASS_API_KEY", "right")
    assert cli.main(["predict", str(PHOTO), "--wait", "--json"]) == 1  # the job failed
    row = json.loads(capsys.readouterr().out)
    assert (row["status"], row["error"], row["fast"]["label"]) == ("failed", "boom", "Egyptian cat")
    job_status = "running"
    assert cli.main(["predict", str(PHOTO), "--wait", "--timeout", "0"]) == 4
    assert cli.main(["job", JOB_ID]) == 0
    assert cli.main(["job", JOB_ID, "--wait", "--timeout", "0"]) == 4
    assert "running" in capsys.readouterr().out


def test_cli_health_lines_leave_out_empty_fields() -> None:
    from twopass.cli.health import format_health
    from twopass.client import Health

    health = Health.from_json(
        {
            "status": "degraded",
            "backends": {
                "table": {"status": "ok", "detail": None},
                "queue": {"status": "down", "detail": "throttled", "visible": 0, "in_flight": None},
                "worker": {"status": "ok", "alive": 1, "workers": [{"id": "w1"}]},
            },
        }
    )
    assert format_health(health).splitlines() == [
        "degraded",
        "  table        ok",
        "  queue        down  (detail=throttled, visible=0)",
        "  worker       ok  (alive=1)",
    ]
