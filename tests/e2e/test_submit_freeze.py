"""No half-submitted job when the backends freeze mid-submit, with no help from the reconciler.

Clients post with Idempotency-Keys while the emulator is frozen (SIGSTOP) for a few seconds, then
resumed (SIGCONT). Each request answers 200 with a job id or 503 with Retry-After, by its deadline.
Then every job answered with an id succeeds (it was queued with its message), every key that got a
503 can be used again (its retry is answered 200: a job of its own, or the first one's answer), and
no job is left queued or running: the ones refused requests recorded ended failed, each with a reason.
The worker's reconciler is off, so this is the API's own doing.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import api, final, until
from tests.e2e.test_chaos import scan_jobs
from twopass.local.stack import LocalStack, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FREEZE_SECONDS = 4.0
CLIENTS = 4
#: The API's deadline here, and how long one AWS call may take (two tries): short enough that the
#: freeze is felt, long enough that the clean-ups after it get through on a loaded machine.
DEADLINE = 2.5
CALL_TIMEOUT = 1.0


@pytest.mark.timeout(240)
def test_every_answer_is_a_queued_job_or_a_reusable_key_when_the_emulator_freezes(
    tmp_path: Any, cat_jpeg: bytes
) -> None:
    stack = LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=1,
        log_dir=tmp_path,
        env={
            "TWOPASS_POLL_WAIT_SECONDS": "1",
            "TWOPASS_API_DEADLINE_SECONDS": str(DEADLINE),
            "TWOPASS_API_CALL_TIMEOUT_SECONDS": str(CALL_TIMEOUT),
            "TWOPASS_RECONCILE_SECONDS": "0",  # nothing but the API ends what it half-made
        },
    )
    outcomes: list[tuple[str, int, float, dict[str, Any]]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client_loop(name: str) -> None:
        with api(stack, timeout=60) as http:
            sent = 0
            while not stop.is_set():
                key = f"{name}-{sent}"
                sent += 1
                started = time.monotonic()
                response = http.post(
                    "/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg", "Idempotency-Key": key}
                )
                with lock:
                    outcomes.append((key, response.status_code, time.monotonic() - started, response.json()))

    with stack:
        with api(stack, timeout=60) as http:  # warm: the model and the clients are loaded before the clock runs

            def warm() -> str | None:
                answer = http.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
                return str(answer.json()["job_id"]) if answer.is_success else None

            warm_job = until(warm, timeout=30, what="a first job accepted")
        emulator = stack.procs["emulator"]
        threads = [threading.Thread(target=client_loop, args=(f"c{i}",)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(1.5)  # some jobs accepted before the freeze
        os.kill(emulator.pid, signal.SIGSTOP)
        try:
            time.sleep(FREEZE_SECONDS)
        finally:
            os.kill(emulator.pid, signal.SIGCONT)
        time.sleep(1.5)  # and some after it
        stop.set()
        for t in threads:
            t.join(timeout=60)

        codes = Counter(code for _, code, *_ in outcomes)
        assert set(codes) <= {200, 503}, codes
        assert codes[503] > 0, "the freeze should have been felt"
        assert codes[200] > 0, "jobs before and after the freeze should have been accepted"
        refused_in = [elapsed for _, code, elapsed, _ in outcomes if code == 503]
        # The deadline answers, not the frozen backend: a 503 comes by the deadline (plus a busy machine).
        assert max(refused_in) < DEADLINE + 2.0, refused_in
        for _, code, _, body in outcomes:
            if code == 503:
                assert body["error"] in ("dependency_unavailable", "enqueue_failed"), body

        with api(stack) as http:
            accepted = {body["job_id"] for _, code, _, body in outcomes if code == 200}
            for job_id in accepted:
                assert final(http, job_id, timeout=60)["status"] == "succeeded", job_id

            # Every refused key can be used again: at worst 409 while its clean-up runs, then 200.
            again: dict[str, str] = {}
            for key, code, _, _ in outcomes:
                if code != 503:
                    continue

                def retried(key: str = key) -> httpx.Response | None:
                    response = http.post(
                        "/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg", "Idempotency-Key": key}
                    )
                    assert response.status_code in (200, 409), response.text
                    return response if response.status_code == 200 else None

                again[key] = until(retried, timeout=30, what=f"key {key} usable again").json()["job_id"]
            for job_id in set(again.values()):
                assert final(http, job_id, timeout=60)["status"] == "succeeded", job_id

            # Nothing half-made: every job the table holds ended (no queued job without a message).
            def all_ended() -> dict[str, dict[str, Any]] | None:
                jobs = {k: v for k, v in scan_jobs(stack).items() if len(k) == 32}
                still = [k for k, v in jobs.items() if v["status"]["S"] in ("queued", "running")]
                return None if still else jobs

            try:
                jobs = until(all_ended, timeout=60, what="every job ended")
            except AssertionError:
                # Say which, and whether the API gave up ending them (its clean-up tries for 30 s).
                stuck = {
                    k: v["status"]["S"]
                    for k, v in scan_jobs(stack).items()
                    if v["status"]["S"] in ("queued", "running")
                }
                gave_up = [
                    line for line in (tmp_path / "api.log").read_text().splitlines() if "could not be ended" in line
                ]
                raise AssertionError(
                    f"jobs left unended: {stuck}; the API's clean-ups that gave up: {gave_up}"
                ) from None
        served = accepted | set(again.values()) | {warm_job}
        left = Counter(v["status"]["S"] for k, v in jobs.items() if k not in served)
        assert set(left) <= {"failed"}, left
        for job_id, item in jobs.items():
            if job_id not in served:
                assert item["error"]["S"], item  # an abandoned job says why
        print(
            f"\nsubmit freeze: frozen {FREEZE_SECONDS:g} s, {len(outcomes)} requests ({dict(codes)}), "
            f"503 answered in {min(refused_in):.2f}-{max(refused_in):.2f} s (deadline {DEADLINE:g} s), "
            f"{len(accepted)} accepted and all succeeded, {len(again)} refused keys reused "
            f"({len(set(again.values()) & accepted)} replayed an accepted job), "
            f"records left by refused requests: {dict(left)}"
        )
