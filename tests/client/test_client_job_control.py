"""The SDK's job control against scripted servers: cancel, retry, the jobs() pages, predict's options,
shed predictions, and waits that end cancelled or expired, blocking and asyncio alike.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.client.test_client_transport import JOB_ID, PREDICT_BODY, Script, error, job_body
from twopass.client import (
    AsyncClient,
    BadRequestError,
    Client,
    InvalidInputError,
    JobFailedError,
    JobPage,
    JobStatus,
    RateLimitedError,
)

URL = "http://twopass.test"
OTHER_ID = "fedcba9876543210fedcba9876543210"


def client(script: Script, **options: Any) -> Client:
    return Client(URL, api_key="k", transport=httpx.MockTransport(script), sleep=lambda _: None, **options)


def async_client(script: Script, **options: Any) -> AsyncClient:
    async def no_sleep(_: float) -> None:
        return None

    return AsyncClient(URL, api_key="k", transport=httpx.MockTransport(script), sleep=no_sleep, **options)


def body(status: str, job_id: str = JOB_ID, **more: Any) -> dict[str, Any]:
    return {**job_body(status), "job_id": job_id, **more}


SHED_BODY = {**PREDICT_BODY, "job_id": None, "status": "shed"}
SHED_BODY.pop("status_url")


def test_predict_sends_deadline_priority_and_overload_as_query_parameters() -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    with client(script) as tp:
        prediction = tp.predict(b"\xff\xd8\xff jpeg", deadline_seconds=30, priority="high", on_overload="shed")
        tp.predict(b"\xff\xd8\xff jpeg")
    sent = script.requests[0].url.params
    assert dict(sent) == {"deadline_seconds": "30", "priority": "high", "on_overload": "shed"}
    assert script.requests[1].url.params == httpx.QueryParams()
    assert prediction.job_id == JOB_ID and not prediction.shed


@pytest.mark.parametrize(
    "options",
    [{"deadline_seconds": 0.5}, {"deadline_seconds": float("nan")}, {"priority": "urgent"}, {"on_overload": "drop"}],
)
def test_predict_refuses_bad_options_before_sending(options: dict[str, Any]) -> None:
    script = Script(httpx.Response(200, json=PREDICT_BODY))
    with client(script) as tp, pytest.raises(InvalidInputError):
        tp.predict(b"\xff\xd8\xff", **options)
    assert script.count == 0


def test_a_shed_prediction_has_the_fast_answer_and_no_job_to_wait_for() -> None:
    script = Script(httpx.Response(200, json=SHED_BODY))
    with client(script) as tp:
        prediction = tp.predict(b"\xff\xd8\xff")
        assert prediction.shed and prediction.status is JobStatus.SHED and prediction.status.done
        assert prediction.job is None and prediction.job_id is None
        assert prediction.label == "Egyptian cat"
        with pytest.raises(InvalidInputError, match="shed"):
            tp.wait(prediction)
    assert script.count == 1


def test_predict_and_wait_asks_to_be_rejected_and_retries_after_429() -> None:
    overloaded = error(429, "overloaded", "the job backlog is over the service's limit", {"Retry-After": "2"})
    script = Script(overloaded, httpx.Response(200, json=PREDICT_BODY), httpx.Response(200, json=body("succeeded")))
    sleeps: list[float] = []
    with Client(URL, transport=httpx.MockTransport(script), sleep=sleeps.append) as tp:
        result = tp.predict_and_wait(b"\xff\xd8\xff", priority="high")
    assert result.succeeded and sleeps[0] == 2.0
    assert [dict(r.url.params) for r in script.requests[:2]] == [{"priority": "high", "on_overload": "reject"}] * 2
    still = Script(overloaded)
    with (
        Client(URL, transport=httpx.MockTransport(still), sleep=lambda _: None, retries=1) as tp,
        pytest.raises(RateLimitedError) as caught,
    ):
        tp.predict_and_wait(b"\xff\xd8\xff")
    assert caught.value.code == "overloaded" and caught.value.retry_after == 2.0 and still.count == 2


def test_cancel_and_retry_send_their_methods_and_map_conflicts() -> None:
    script = Script(
        httpx.Response(200, json=body("cancelled")),
        error(409, "job_final", "job has already ended (succeeded)"),
        httpx.Response(200, json=body("queued", history=[{"status": "cancelled", "attempts": 0,
                                                          "retried_at": "2025-01-01T00:00:02.000Z"}])),
        error(410, "image_gone", "the image is no longer kept"),
    )  # fmt: skip
    with client(script) as tp:
        cancelled = tp.cancel(JOB_ID)
        assert cancelled.cancelled and cancelled.done and not cancelled.failed
        with pytest.raises(BadRequestError) as final:
            tp.cancel(JOB_ID)
        queued = tp.retry(cancelled)
        with pytest.raises(BadRequestError) as gone:
            tp.retry(JOB_ID)
    assert [(r.method, r.url.path) for r in script.requests] == [
        ("DELETE", f"/job/{JOB_ID}"),
        ("DELETE", f"/job/{JOB_ID}"),
        ("POST", f"/job/{JOB_ID}/retry"),
        ("POST", f"/job/{JOB_ID}/retry"),
    ]
    assert final.value.status == 409 and final.value.code == "job_final"
    assert gone.value.status == 410 and gone.value.code == "image_gone"
    assert queued.status is JobStatus.QUEUED and [h.status for h in queued.history] == [JobStatus.CANCELLED]


def test_jobs_pages_follow_the_cursor_until_it_ends() -> None:
    pages = [
        {"jobs": [body("failed", JOB_ID, error="boom"), body("failed", OTHER_ID)], "next_cursor": "abc"},
        {"jobs": [body("failed", "1" * 32)], "next_cursor": None},
    ]
    script = Script(*(httpx.Response(200, json=p) for p in pages))
    with client(script) as tp:
        seen = list(tp.jobs("failed", limit=2))
    assert [len(p) for p in seen] == [2, 1] and all(isinstance(p, JobPage) for p in seen)
    assert [j.job_id for p in seen for j in p] == [JOB_ID, OTHER_ID, "1" * 32]
    assert seen[0].jobs[0].error == "boom" and seen[1].next_cursor is None
    assert [dict(r.url.params) for r in script.requests] == [
        {"limit": "2", "status": "failed"},
        {"limit": "2", "status": "failed", "cursor": "abc"},
    ]
    lazy = Script(*(httpx.Response(200, json=p) for p in pages))
    with client(lazy) as tp:
        next(iter(tp.jobs()))
    assert lazy.count == 1, "a page is fetched only when the iteration reaches it"
    for bad in ({"status": "shed"}, {"limit": 0}, {"limit": 101}):
        with client(Script(httpx.Response(200, json=pages[0]))) as tp, pytest.raises(InvalidInputError):
            next(iter(tp.jobs(**bad)))


@pytest.mark.parametrize(("status", "error_text", "message"), [
    ("cancelled", None, f"job {JOB_ID} was cancelled"),
    ("expired", "not started within its deadline", f"job {JOB_ID} expired: not started within its deadline"),
])  # fmt: skip
def test_wait_ends_on_cancelled_and_expired_jobs(status: str, error_text: str | None, message: str) -> None:
    script = Script(httpx.Response(200, json=body("queued")), httpx.Response(200, json=body(status, error=error_text)))
    with client(script) as tp:
        with pytest.raises(JobFailedError) as caught:
            tp.wait(JOB_ID)
        assert str(caught.value) == message and caught.value.result.status == status
        ended = tp.wait(JOB_ID, raise_on_failure=False)
    assert ended.status == status and ended.done


def test_job_result_reads_priority_deadline_and_tolerates_older_servers() -> None:
    script = Script(
        httpx.Response(200, json=body("queued", priority="high", deadline_at="2025-01-01T00:01:00.000Z")),
        httpx.Response(200, json=job_body("queued")),
    )
    with client(script) as tp:
        urgent, plain = tp.job(JOB_ID), tp.job(JOB_ID)
    assert urgent.priority == "high" and urgent.deadline_at is not None and urgent.deadline_at.minute == 1
    assert plain.priority == "normal" and plain.deadline_at is None and plain.history == ()


def test_async_client_has_the_same_job_control() -> None:
    pages = [
        {"jobs": [body("cancelled")], "next_cursor": "next"},
        {"jobs": [body("queued", OTHER_ID)], "next_cursor": None},
    ]
    script = Script(
        httpx.Response(200, json=SHED_BODY),
        httpx.Response(200, json=body("cancelled")),
        httpx.Response(200, json=body("queued")),
        *(httpx.Response(200, json=p) for p in pages),
    )

    async def scenario() -> tuple[bool, str, str, list[str]]:
        async with async_client(script) as tp:
            shed = await tp.predict(b"\xff\xd8\xff", deadline_seconds=5, priority="normal", on_overload="shed")
            cancelled = await tp.cancel(JOB_ID)
            retried = await tp.retry(JOB_ID)
            listed = [job.job_id async for page in tp.jobs(limit=1) for job in page]
            return shed.shed, cancelled.status, retried.status, listed

    shed, cancelled, retried, listed = asyncio.run(scenario())
    assert shed and cancelled == "cancelled" and retried == "queued" and listed == [JOB_ID, OTHER_ID]
    methods = [(r.method, r.url.path) for r in script.requests]
    assert methods[1:3] == [("DELETE", f"/job/{JOB_ID}"), ("POST", f"/job/{JOB_ID}/retry")]
    assert json.loads(json.dumps(dict(script.requests[0].url.params))) == {
        "deadline_seconds": "5",
        "priority": "normal",
        "on_overload": "shed",
    }
