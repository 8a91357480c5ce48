"""What the end-to-end files share: a client on the stack, waiting for a condition or a job's end,
a queue's depth, and workers a test starts on demand."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from twopass.local.stack import LocalStack, free_port


def api(stack: LocalStack, key: str | None = None, timeout: float = 30) -> httpx.Client:
    """An HTTP client on the stack's API with ``key`` (by default the stack's own, if any)."""
    return httpx.Client(base_url=stack.api_url, timeout=timeout, headers={"x-api-key": key or stack.api_key or ""})


def until(check: Callable[[], Any], timeout: float = 90, what: str = "condition", every: float = 0.2) -> Any:
    """``check()``'s first truthy value, polled every ``every`` s; fails the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} not met after {timeout} s")


def final(client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
    """The job's body once it is neither queued nor running."""

    def ended() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/job/{job_id}").json()
        return body if body["status"] not in ("queued", "running") else None

    result: dict[str, Any] = until(ended, timeout, f"job {job_id} ending")
    return result


def queue_depth(stack: LocalStack, logical_id: str = "JobsQueue") -> int:
    """Messages in the queue, visible and in flight."""
    attrs = stack.client("sqs").get_queue_attributes(
        QueueUrl=stack.resources[logical_id],
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


@contextlib.contextmanager
def workers_on_demand(stack: LocalStack) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """A function that starts one more worker; every one started is stopped (SIGTERM, it drains) after."""
    started: list[str] = []

    def start() -> subprocess.Popen[bytes]:
        started.append(f"worker-{len(started)}-{time.monotonic_ns()}")
        return stack.start_worker(started[-1])

    try:
        yield start
    finally:
        stack.stop_workers(started)


def own_stack(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[LocalStack]:
    """A stack of a test file's own (``yield from`` it in a module fixture): its own ports and logs, no
    worker (the tests start theirs), and ``options`` as :class:`LocalStack` takes them."""
    local = LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=0,
        log_dir=tmp_path_factory.mktemp(f"{name}-logs"),
        **options,
    )
    with local:
        yield local
