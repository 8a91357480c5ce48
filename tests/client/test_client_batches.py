"""The SDK's predict_many (POST /batches) against a scripted server, blocking and asyncio alike: batches of up
to 100 within the body limit, big images uploaded first, one result or item error per image in order."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.test_client_transport import PREDICT_BODY, Script, job_body
from tests.client.test_client_uploads import BIG, PUT_URL, UPLOAD_ID, URL, metadata
from twopass.client import AsyncClient, BatchItemError, Client, JobResult, Prediction, RateLimitedError

MiB = 1024 * 1024


def jpeg(n: int, size: int = 100) -> bytes:
    """A distinct JPEG-looking file (the server is scripted: only the bytes matter)."""
    return b"\xff\xd8\xff" + n.to_bytes(4, "big") + b"\0" * size


def job_id(n: int) -> str:
    return f"{n:032x}"


class BatchServer:
    """POST /batches answers each item with a job named after the image's number, or an item error for
    images whose number is in ``refuse``; also /metadata and the upload pair."""

    def __init__(self, *, inline: int = 4 * MiB, uploads: bool = True, refuse: frozenset[int] = frozenset()) -> None:
        self.inline, self.uploads, self.refuse = inline, uploads, refuse
        self.script = Script(self.answer)
        self.batches: list[dict[str, Any]] = []

    def answer(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/metadata":
            return httpx.Response(200, json=metadata(self.inline, self.uploads))
        if path == "/uploads":
            grant = {"upload_id": UPLOAD_ID, "url": PUT_URL, "method": "PUT", "headers": {"Content-Type": "image/jpeg"}}
            return httpx.Response(201, json=grant)
        if request.method == "PUT":
            return httpx.Response(200)
        assert path == "/batches", path
        body = json.loads(request.content)
        assert len(request.content) <= self.inline * 4 // 3 + 4096, "within the server's body limit"
        assert 1 <= len(body["items"]) <= 100
        self.batches.append(body)
        items = []
        for index, item in enumerate(body["items"]):
            # An image's number is in its bytes; the uploaded one is numbered 9999.
            n = 9999 if "upload_id" in item else int.from_bytes(base64.b64decode(item["image_data"])[3:7], "big")
            if n in self.refuse:
                items.append({"index": index, "error": "invalid_image", "detail": f"image {n} is not an image"})
            else:
                items.append({"index": index, **PREDICT_BODY, "job_id": job_id(n)})
        return httpx.Response(200, json={"batch_id": "b" * 32, "items": items})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.script)


def test_predict_many_answers_each_image_in_order_with_item_errors_in_place() -> None:
    server = BatchServer(refuse=frozenset({3, 7}))
    images = [jpeg(n) for n in range(10)]
    with Client(URL, transport=server.transport) as tp:
        results = tp.predict_many(images, priority="high", deadline_seconds=30)
    assert [r.url.path for r in server.script.requests] == ["/batches"], "small images: one call, no /metadata"
    assert len(results) == 10
    for n, result in enumerate(results):
        if n in (3, 7):
            assert isinstance(result, BatchItemError) and result.index == n and result.code == "invalid_image"
            assert str(n) in result.detail
        else:
            assert isinstance(result, Prediction) and result.job_id == job_id(n) and result.label == "Egyptian cat"
    [sent] = server.batches
    assert sent["priority"] == "high" and sent["deadline_seconds"] == 30.0
    assert [base64.b64decode(i["image_data"]) for i in sent["items"]] == images


def test_predict_many_splits_into_batches_of_100_and_within_the_body_limit() -> None:
    server = BatchServer(refuse=frozenset({150}))
    with Client(URL, transport=server.transport) as tp:
        results = tp.predict_many(jpeg(n) for n in range(250))
    assert [len(b["items"]) for b in server.batches] == [100, 100, 50]
    assert [r.index if isinstance(r, BatchItemError) else r.job_id for r in results] == [
        150 if n == 150 else job_id(n) for n in range(250)
    ], "item errors renumbered to their place among all the images"

    # 300 KB images against a 1 MiB inline limit: a body holds 3 (1.4 MB), so batches of 3.
    server = BatchServer(inline=MiB)
    with Client(URL, transport=server.transport) as tp:
        results = tp.predict_many([jpeg(n, 300_000) for n in range(7)])
    assert [len(b["items"]) for b in server.batches] == [3, 3, 1]
    assert [r.job_id for r in results if isinstance(r, Prediction)] == [job_id(n) for n in range(7)]
    assert server.script.requests[0].url.path == "/metadata", "the server's limit read before passing the smallest"


def test_predict_many_uploads_images_over_the_inline_limit_and_sends_their_upload_ids() -> None:
    server = BatchServer(inline=MiB + 1)
    with Client(URL, api_key="k", transport=server.transport) as tp:
        results = tp.predict_many([jpeg(1), BIG, jpeg(2)])
    paths = [r.url.path for r in server.script.requests]
    assert paths == ["/metadata", "/uploads", "/payloads/uploads/o/u", "/batches"]
    [sent] = server.batches
    assert sent["items"][1] == {"upload_id": UPLOAD_ID}
    assert [r.job_id for r in results if isinstance(r, Prediction)] == [job_id(1), job_id(9999), job_id(2)]


def test_without_uploads_an_image_too_big_for_any_batch_is_its_own_error(tmp_path: Path) -> None:
    server = BatchServer(inline=MiB + 1, uploads=False)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with Client(URL, transport=server.transport) as tp:
        results = tp.predict_many([BIG, jpeg(1), empty, tmp_path / "missing.jpg"])
    assert [type(r).__name__ for r in results] == ["BatchItemError", "Prediction", "BatchItemError", "BatchItemError"]
    codes = [(r.index, r.code) for r in results if isinstance(r, BatchItemError)]
    assert codes == [(0, "payload_too_large"), (2, "invalid_input"), (3, "invalid_input")]
    assert [len(b["items"]) for b in server.batches] == [1], "only the good image was sent"


def test_a_batch_the_service_refuses_raises_after_the_retries() -> None:
    script = Script(httpx.Response(429, json={"error": "overloaded", "detail": "busy"}, headers={"retry-after": "0"}))
    with Client(URL, transport=httpx.MockTransport(script), retries=1) as tp, pytest.raises(RateLimitedError):
        tp.predict_many([jpeg(1)], on_overload="reject")
    assert json.loads(script.requests[0].content)["on_overload"] == "reject"


def test_the_async_client_predicts_many_the_same_way() -> None:
    server = BatchServer(refuse=frozenset({1}))

    async def run() -> list[Prediction | BatchItemError]:
        async with AsyncClient(URL, transport=server.transport) as tp:
            return await tp.predict_many([jpeg(n) for n in range(120)])

    results = asyncio.run(run())
    assert [len(b["items"]) for b in server.batches] == [100, 20]
    assert isinstance(results[1], BatchItemError) and results[1].index == 1
    assert [r.job_id for r in results if isinstance(r, Prediction)] == [job_id(n) for n in range(120) if n != 1]


def wait_server(refuse: frozenset[int]) -> BatchServer:
    server = BatchServer(refuse=refuse)
    batches = server.answer

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/job/"):
            ended = job_body("succeeded") | {"job_id": request.url.path.rsplit("/", 1)[1]}
            return httpx.Response(200, json=ended)
        return batches(request)

    server.script = Script(answer)
    return server


def test_predict_many_and_wait_gives_each_jobs_result_or_its_item_error() -> None:
    server = wait_server(frozenset({1}))
    with Client(URL, transport=server.transport) as tp:
        results = tp.predict_many_and_wait([jpeg(0), jpeg(1), jpeg(2)])
    assert isinstance(results[1], BatchItemError)
    done = [r for r in results if isinstance(r, JobResult)]
    assert [r.job_id for r in done] == [job_id(0), job_id(2)] and all(r.succeeded for r in done)
    assert server.batches[0]["on_overload"] == "reject", "waiting wants the slow answer: refuse, never shed"

    async def run() -> list[JobResult | BatchItemError]:
        async with AsyncClient(URL, transport=server.transport) as tp:
            return await tp.predict_many_and_wait([jpeg(0), jpeg(1), jpeg(2)])

    assert [getattr(r, "job_id", None) for r in asyncio.run(run())] == [job_id(0), None, job_id(2)]


def cli_with(monkeypatch: pytest.MonkeyPatch, transport: httpx.MockTransport) -> Any:
    import twopass.cli as cli
    from twopass.cli import common

    monkeypatch.setattr(common, "CliAsyncClient", functools.partial(common.CliAsyncClient, transport=transport))
    monkeypatch.setenv("TWOPASS_API_KEY", "k")
    return cli


def folder(tmp_path: Path, count: int) -> Path:
    for n in range(count):
        (tmp_path / f"img{n:03}.jpg").write_bytes(jpeg(n))
    return tmp_path


def test_cli_sends_more_than_8_files_in_batches_keeping_its_table_and_exit_codes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = BatchServer(refuse=frozenset({4}))
    cli = cli_with(monkeypatch, server.transport)
    assert cli.main(["predict", str(folder(tmp_path, 130)), "--priority", "high"]) == 1, "one file was refused"
    assert [r.url.path for r in server.script.requests] == ["/batches", "/batches"]
    assert sorted(len(b["items"]) for b in server.batches) == [30, 100], "sent at once (--concurrency 4)"
    assert all(b["priority"] == "high" for b in server.batches)
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].split() == ["FILE", "FAST", "JOB", "STATUS"] and len(lines) == 131
    assert lines[1].split()[-1] == "queued" and job_id(0) in lines[1]
    assert "img004.jpg" in lines[5] and "error: invalid_image: image 4 is not an image" in lines[5]
    assert "130 files: 1 error, 129 queued" in err

    # Nine files with --wait --json: the jobs' slow results, one JSON row per file.
    server = wait_server(frozenset())
    cli = cli_with(monkeypatch, server.transport)
    (tmp_path / "nine").mkdir()
    assert cli.main(["predict", str(folder(tmp_path / "nine", 9)), "--wait", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(row["job_id"] for row in rows) == [job_id(n) for n in range(9)]
    assert all(row["status"] == "succeeded" and row["slow"]["label"] == "tabby" for row in rows)
    assert [len(b["items"]) for b in server.batches] == [9] and server.batches[0]["on_overload"] == "reject"


def test_cli_sends_8_files_one_by_one_and_a_refused_batch_fails_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    cli = cli_with(monkeypatch, httpx.MockTransport(script))
    (tmp_path / "eight").mkdir()
    assert cli.main(["predict", str(folder(tmp_path / "eight", 8))]) == 0
    assert [r.url.path for r in script.requests] == ["/predict"] * 8

    refused = {"error": "unauthorized", "detail": "the API key is not valid"}
    script = Script(httpx.Response(401, json=refused))
    cli = cli_with(monkeypatch, httpx.MockTransport(script))
    (tmp_path / "many").mkdir()
    capsys.readouterr()
    assert cli.main(["predict", str(folder(tmp_path / "many", 250)), "--concurrency", "1"]) == 5
    assert len(script.requests) == 1, "after the key was refused, no other batch is sent"
    err = capsys.readouterr().err
    assert err.count("the API key is not valid") == 1, "a server problem is said once"
    assert "250 files: " in err and "error" in err and "skipped" in err
