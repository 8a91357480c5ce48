"""The SDK's automatic uploads and waiting reads against scripted servers, blocking and asyncio alike."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.client.test_client_transport import JOB_ID, PREDICT_BODY, Script, job_body
from twopass.client import AsyncClient, BadRequestError, Client, NotFoundError
from twopass.client._flows import IMAGE_PENDING_WAIT

URL = "http://twopass.test"
PUT_URL = "http://bucket.test/payloads/uploads/o/u?X-Amz-Signature=abc"
UPLOAD_ID = "a" * 32
MiB = 1024 * 1024
BIG = b"\xff\xd8\xff" + b"\0" * (2 * MiB)


def metadata(max_bytes: int = MiB + 1, uploads: bool = True) -> dict[str, Any]:
    limits = {"path": "/uploads", "max_bytes": 50 * MiB, "expiry_seconds": 900, "content_types": ["image/jpeg"]}
    return {"input": {"max_bytes": max_bytes, "uploads": limits if uploads else None}}


def upload_server(put_status: int = 200) -> Script:
    def answer(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/metadata":
            return httpx.Response(200, json=metadata())
        if path == "/uploads":
            grant = {"upload_id": UPLOAD_ID, "url": PUT_URL, "method": "PUT", "headers": {"Content-Type": "image/jpeg"}}
            return httpx.Response(201, json={**grant, "expires_at": "2030-01-01T00:00:00.000Z", "max_bytes": 50 * MiB})
        if request.method == "PUT":
            if put_status != 200:
                xml = "<Error><Code>AccessDenied</Code><Message>no</Message></Error>"
                return httpx.Response(put_status, text=xml, headers={"content-type": "application/xml"})
            return httpx.Response(200)
        if path == "/predict":
            return httpx.Response(200, json=PREDICT_BODY)
        return httpx.Response(404, json={"error": "not_found", "detail": "Not Found"})

    return Script(answer)


def check_upload_requests(script: Script) -> None:
    metadata_call, create, put, predict = script.requests
    assert (metadata_call.method, metadata_call.url.path) == ("GET", "/metadata")
    assert (create.method, create.url.path) == ("POST", "/uploads")
    assert json.loads(create.content) == {"content_type": "image/jpeg", "content_length": len(BIG)}
    assert (put.method, str(put.url)) == ("PUT", PUT_URL) and put.content == BIG
    assert put.headers["content-type"] == "image/jpeg"
    assert "x-api-key" not in put.headers, "the API key never goes to the bucket"
    assert (predict.method, predict.url.path) == ("POST", "/predict")
    assert json.loads(predict.content) == {"upload_id": UPLOAD_ID, "priority": "high", "deadline_seconds": 30.0}
    assert predict.url.params == httpx.QueryParams()


def test_an_image_over_the_inline_limit_is_uploaded_then_predicted_by_reference() -> None:
    script = upload_server()
    with Client(URL, api_key="k", transport=httpx.MockTransport(script), sleep=lambda _: None) as tp:
        prediction = tp.predict(BIG, priority="high", deadline_seconds=30)
        assert prediction.job_id == JOB_ID
        check_upload_requests(script)
        tp.predict(BIG, priority="high", deadline_seconds=30)
    assert [r.url.path for r in script.requests[4:]] == ["/uploads", "/payloads/uploads/o/u", "/predict"], (
        "the limits are read once"
    )


def test_the_async_client_uploads_too() -> None:
    script = upload_server()

    async def run() -> None:
        async with AsyncClient(URL, api_key="k", transport=httpx.MockTransport(script)) as tp:
            assert (await tp.predict(BIG, priority="high", deadline_seconds=30)).job_id == JOB_ID

    asyncio.run(run())
    check_upload_requests(script)


def test_small_images_and_servers_without_uploads_go_inline() -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    with Client(URL, transport=httpx.MockTransport(script)) as tp:
        tp.predict(b"\xff\xd8\xff" + b"\0" * 1000)
    assert [r.url.path for r in script.requests] == ["/predict"], "no /metadata for a small image"
    script = Script(httpx.Response(200, json=metadata(uploads=False)), httpx.Response(200, json=PREDICT_BODY))
    with Client(URL, transport=httpx.MockTransport(script)) as tp:
        tp.predict(BIG)
    assert [r.url.path for r in script.requests] == ["/metadata", "/predict"]
    assert script.requests[1].content == BIG


def test_a_refused_put_raises_with_the_buckets_code() -> None:
    with Client(URL, transport=httpx.MockTransport(upload_server(403))) as tp, pytest.raises(BadRequestError) as err:
        tp.predict(BIG)
    assert err.value.status == 403 and err.value.code == "AccessDenied"


def test_an_unknown_upload_is_the_servers_own_404() -> None:
    gone = {"error": "upload_not_found", "detail": "no upload (unknown or expired)"}
    script = Script(
        httpx.Response(200, json=metadata()),
        httpx.Response(201, json={"upload_id": UPLOAD_ID, "url": PUT_URL, "method": "PUT", "headers": {}}),
        httpx.Response(200),
        httpx.Response(404, json=gone),
    )
    with Client(URL, transport=httpx.MockTransport(script)) as tp, pytest.raises(NotFoundError) as err:
        tp.predict(BIG)
    assert err.value.code == "upload_not_found"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_wait_asks_the_server_to_hold_and_never_sleeps_between() -> None:
    clock, slept = Clock(), []

    def server(request: httpx.Request) -> httpx.Response:
        held = float(request.url.params.get("wait", "0"))
        clock.now += held  # the server held the request that long
        return httpx.Response(200, json=job_body("succeeded" if clock.now >= 45 else "queued"))

    script = Script(server)
    with Client(URL, transport=httpx.MockTransport(script), sleep=slept.append, clock=clock) as tp:
        result = tp.wait(JOB_ID, timeout=60)
    assert result.succeeded and slept == []
    assert [r.url.params["wait"] for r in script.requests] == ["20", "20", "20"]


def test_wait_polls_a_server_that_answers_at_once() -> None:
    slept: list[float] = []
    script = Script(
        httpx.Response(200, json=job_body("queued")),
        httpx.Response(200, json=job_body("queued")),
        httpx.Response(200, json=job_body("succeeded")),
    )
    with Client(URL, transport=httpx.MockTransport(script), sleep=slept.append, clock=Clock()) as tp:
        assert tp.wait(JOB_ID, timeout=60).succeeded
    assert "wait" in script.requests[0].url.params
    assert all("wait" not in r.url.params for r in script.requests[1:]), "it stops asking once it saw no hold"
    assert len(slept) == 2


def test_wait_is_cut_to_the_timeout_and_the_read_timeout() -> None:
    script = Script(httpx.Response(200, json=job_body("succeeded")))
    with Client(URL, transport=httpx.MockTransport(script), clock=Clock()) as tp:
        tp.wait(JOB_ID, timeout=7.5)
    with Client(URL, timeout=10, transport=httpx.MockTransport(script), clock=Clock()) as tp:
        tp.wait(JOB_ID, timeout=None)
    assert [r.url.params["wait"] for r in script.requests] == ["7.5", "8"]


# -- the presigned POST, and a retry right after a cancel ---------------------------------------------

POST_URL = "http://bucket.test/"
POST_FIELDS = {
    "key": "payloads/uploads/o/u",
    "Content-Type": "image/jpeg",
    "policy": "cG9saWN5",
    "x-amz-signature": "s",
}


def post_server(post_status: int = 204) -> Script:
    """A server that offers a presigned POST beside the PUT (which must then go unused)."""

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/uploads":
            grant = {"upload_id": UPLOAD_ID, "url": PUT_URL, "method": "PUT", "headers": {"Content-Type": "image/jpeg"}}
            post = {"url": POST_URL, "fields": POST_FIELDS}
            body = {**grant, "expires_at": "2030-01-01T00:00:00.000Z", "max_bytes": 50 * MiB, "post": post}
            return httpx.Response(201, json=body)
        if request.url.host == "bucket.test":
            if request.method != "POST":
                return httpx.Response(405)
            if post_status != 204:
                xml = "<Error><Code>EntityTooLarge</Code><Message>too big</Message></Error>"
                return httpx.Response(post_status, text=xml, headers={"content-type": "application/xml"})
            return httpx.Response(204)
        return upload_server()(request)

    return Script(answer)


def check_post(script: Script) -> None:
    [form] = [r for r in script.requests if r.url.host == "bucket.test"]
    assert (form.method, str(form.url)) == ("POST", POST_URL) and "x-api-key" not in form.headers
    body = form.read()
    assert form.headers["content-type"].startswith("multipart/form-data; boundary=")
    # Every field, as given, before the file: S3 ignores any field after it.
    positions = [body.index(f'name="{name}"\r\n\r\n{value}\r\n'.encode()) for name, value in POST_FIELDS.items()]
    file_at = body.index(b'name="file"; filename="image"\r\nContent-Type: image/jpeg\r\n\r\n' + BIG + b"\r\n")
    assert max(positions) < file_at
    assert [r.url.path for r in script.requests][-1] == "/predict"


def test_a_presigned_post_is_used_when_the_server_offers_one() -> None:
    script = post_server()
    with Client(URL, api_key="k", transport=httpx.MockTransport(script), sleep=lambda _: None) as tp:
        assert tp.predict(BIG).job_id == JOB_ID
    check_post(script)

    script = post_server()

    async def run() -> None:
        async with AsyncClient(URL, api_key="k", transport=httpx.MockTransport(script)) as tp:
            assert (await tp.predict(BIG)).job_id == JOB_ID

    asyncio.run(run())
    check_post(script)


def test_a_post_s3_refuses_raises_with_its_code() -> None:
    with (
        Client(URL, api_key="k", transport=httpx.MockTransport(post_server(400)), sleep=lambda _: None) as tp,
        pytest.raises(BadRequestError) as refused,
    ):
        tp.predict(BIG)
    assert refused.value.code == "EntityTooLarge" and "upload's POST was refused" in refused.value.detail


def pending(retry_after: str = "1") -> httpx.Response:
    body = {"error": "image_pending", "detail": "the image is on its way"}
    return httpx.Response(409, json=body, headers={"retry-after": retry_after})


def test_retry_asks_again_after_each_retry_after_while_the_image_is_pending() -> None:
    script = Script(pending(), pending("2"), httpx.Response(200, json=job_body("queued")))
    slept: list[float] = []
    with Client(URL, api_key="k", transport=httpx.MockTransport(script), sleep=slept.append) as tp:
        assert tp.retry(JOB_ID).status == "queued"
    assert slept == [1.0, 2.0] and script.count == 3
    assert {r.url.path for r in script.requests} == {f"/job/{JOB_ID}/retry"}

    script = Script(pending(), httpx.Response(200, json=job_body("queued")))
    slept_async: list[float] = []

    async def nap(seconds: float) -> None:
        slept_async.append(seconds)

    async def run() -> None:
        async with AsyncClient(URL, api_key="k", transport=httpx.MockTransport(script), sleep=nap) as tp:
            assert (await tp.retry(JOB_ID)).status == "queued"

    asyncio.run(run())
    assert slept_async == [1.0]


def test_retry_gives_up_on_a_pending_image_after_its_bound_and_on_other_conflicts_at_once() -> None:
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    transport = httpx.MockTransport(Script(pending("10")))
    with (
        Client(URL, api_key="k", transport=transport, sleep=sleep, clock=lambda: now[0]) as tp,
        pytest.raises(BadRequestError) as waited,
    ):
        tp.retry(JOB_ID)
    assert waited.value.code == "image_pending" and now[0] == IMAGE_PENDING_WAIT, (
        "2 minutes of Retry-After, then the error"
    )
    changed = httpx.Response(409, json={"error": "image_changed", "detail": "replaced"})
    script = Script(changed)
    with (
        Client(URL, api_key="k", transport=httpx.MockTransport(script), sleep=lambda _: None) as tp,
        pytest.raises(BadRequestError) as refused,
    ):
        tp.retry(JOB_ID)
    assert refused.value.code == "image_changed" and script.count == 1
