"""A worker of the local stack asked for CUDA on this GPU-less machine: it exits at start, naming
what is missing, instead of serving on the CPU; allowed to fall back, it serves and ``/health/all``
says ``degraded`` (over HTTP, through the stack's own worker processes)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import api, final, own_stack, until
from twopass.local.stack import LocalStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "provider-stack",
        env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "1", "TWOPASS_MAX_BATCH_SIZE": "4"},
    )


def _health(stack: LocalStack) -> dict[str, Any]:
    with api(stack, timeout=10) as client:
        data: dict[str, Any] = client.get("/health/all").json()
    return data


def test_a_worker_asked_for_cuda_exits_at_start_naming_what_is_missing(stack: LocalStack) -> None:
    stack.env["TWOPASS_PROVIDERS"] = "cuda,cpu"
    try:
        proc = stack.start_worker("worker-cuda")
        code = proc.wait(60)
    finally:
        del stack.env["TWOPASS_PROVIDERS"]
    assert code == 3
    assert stack.log_dir is not None
    log = (stack.log_dir / "worker-cuda.log").read_text()
    (line,) = [x for x in log.splitlines() if x.startswith("twopass-worker cannot start:")]
    assert "CUDAExecutionProvider was required but the session runs on CPUExecutionProvider" in line
    assert _health(stack)["backends"]["worker"]["status"] == "idle"  # it never reported itself alive


def test_a_worker_allowed_to_fall_back_serves_and_health_says_degraded(stack: LocalStack, cat_jpeg: bytes) -> None:
    stack.env.update(TWOPASS_PROVIDERS="cuda,cpu", TWOPASS_ALLOW_CPU_FALLBACK="true")
    try:
        stack.start_worker("worker-fallback")
    finally:
        del stack.env["TWOPASS_PROVIDERS"], stack.env["TWOPASS_ALLOW_CPU_FALLBACK"]
    try:
        data = until(lambda: (h := _health(stack))["backends"]["worker"]["alive"] and h, 60, "the worker's heartbeat")
        assert data["status"] == "degraded"
        worker = data["backends"]["worker"]
        assert worker["status"] == "degraded"
        (entry,) = worker["workers"]
        assert (entry["provider"], entry["provider_requested"]) == ("CPUExecutionProvider", "CUDAExecutionProvider")
        assert "host" not in entry and "pid" not in entry
        with api(stack) as client:
            job = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"}).json()
            assert final(client, job["job_id"], timeout=60)["status"] == "succeeded"  # it does serve
    finally:
        stack.stop_workers(["worker-fallback"])
    # Stopped cleanly, it removed its heartbeat: nothing is left to say degraded.
    deadline = time.monotonic() + 20
    while _health(stack)["backends"]["worker"]["status"] != "idle" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _health(stack)["status"] == "ok"


def test_health_all_needs_a_key(stack: LocalStack) -> None:
    assert httpx.get(f"{stack.api_url}/health/all", timeout=10).status_code in (401, 403)
