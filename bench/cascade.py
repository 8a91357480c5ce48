"""What the cascade's flow costs and what the result cache saves, measured on the local stack.

    python -m bench.cascade [--rounds 15]     # starts a local stack on free ports (~1-2 min on 2 cores)

1. ``POST /predict`` as it is now (the job record written while the fast model runs, the message sent
   once it has answered, carrying the fast top-1 for agreement) against the flow before the cascade
   (record and message both overlapped with the fast model), in-process over the same emulator,
   requests alternating between the two so a busy machine slows both alike.
2. Over HTTP on the stack with the result cache on: a fresh image (a byte changed, so a miss) from the
   POST to its slow answer, against a repeated image whose slow answer is cached (in the POST's answer).

Prints medians (and p90) in milliseconds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import cat_jpeg, log, percentile
from twopass.local.stack import LocalStack, free_port


def _old_flow() -> Any:
    """The fast path before the cascade: the whole enqueue (record + message) overlapped with the model."""
    from twopass.api.schemas import PredictResponse
    from twopass.api.usecases import submit as current
    from twopass.jobs.base import JobRecord, new_job_id

    async def _submit(context: Any, submission: Any, caller: Any) -> Any:
        service = context.service
        record = JobRecord(job_id=new_job_id(), owner=caller.owner)
        tensor = await context.infer(service.decode, submission.data)  # a bad image fails before any job
        classify = context.infer(service.classify, tensor)
        intake, job_context = service.intake, {"request_id": caller.request_id}
        await context.io(lambda: intake.publish(intake.record_job(record, submission.data, job_context)))
        prediction, inference_ms = await classify
        return current.Submitted(
            PredictResponse.build(record.job_id, prediction.result(service.fast_name, inference_ms))
        )

    return _submit


def overlap(stack: LocalStack, rounds: int) -> dict[str, list[float]]:
    from fastapi.testclient import TestClient

    from twopass.api.app import create_app
    from twopass.api.services.service import TwopassService
    from twopass.api.usecases import submit
    from twopass.config import Settings

    env = stack.app_env()
    for key in ("AWS_ENDPOINT_URL", *[k for k in env if k.startswith("TWOPASS_")]):
        os.environ[key] = env[key]
    os.environ.pop("TWOPASS_API_KEYS", None)
    settings = Settings.from_env()
    new_flow, old_flow = submit._submit, _old_flow()
    services = {cached: TwopassService.from_settings(settings.replace(result_cache=cached)) for cached in (False, True)}
    clients = {cached: TestClient(create_app(service, emit_metrics=False)) for cached, service in services.items()}
    logging.getLogger("twopass").setLevel(logging.WARNING)  # one INFO line per request would be all we see
    variants = {
        "before: record + send overlapped": (old_flow, clients[False]),
        "now: record overlapped, send after": (new_flow, clients[False]),
        "now, result cache on (a miss)": (new_flow, clients[True]),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    image = cat_jpeg()
    for n in range(rounds + 1):  # the first round warms every path up and is not counted
        for name, (flow, client) in variants.items():
            submit._submit = flow
            body = image + n.to_bytes(4, "big") + name.encode()  # never a cache hit
            started = time.perf_counter()
            response = client.post("/predict", content=body, headers={"Content-Type": "image/jpeg"})
            if n:
                times[name].append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200 and response.json()["status"] == "queued", response.text
    submit._submit = new_flow
    for client in clients.values():
        client.close()
    return times


def cache(stack: LocalStack, rounds: int) -> dict[str, list[float]]:
    """Fresh images first (each to its slow answer), then each of them again (a cache hit), so the hits
    do not meet the worker's writes and acks that follow a job's completion."""
    import httpx

    image = cat_jpeg()
    # Bytes after the JPEG's end: the same picture, another image to the cache.
    images = [image + b"\0" * (i + 1) for i in range(rounds)]
    times: dict[str, list[float]] = {
        "fresh: POST alone (fast answer)": [],
        "fresh: POST to slow answer": [],
        "cached: POST (slow answer in it)": [],
    }
    headers = {"x-api-key": stack.api_key or "", "Content-Type": "image/jpeg"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=60) as client:
        _wait(client, client.post("/predict", content=image).json()["job_id"])  # warm both paths
        for data in images:
            started = time.perf_counter()
            posted = client.post("/predict", content=data).json()
            times["fresh: POST alone (fast answer)"].append((time.perf_counter() - started) * 1000)
            assert posted["status"] == "queued", posted
            _wait(client, posted["job_id"])
            times["fresh: POST to slow answer"].append((time.perf_counter() - started) * 1000)
        time.sleep(1.0)
        for data in images:
            started = time.perf_counter()
            hit = client.post("/predict", content=data).json()
            times["cached: POST (slow answer in it)"].append((time.perf_counter() - started) * 1000)
            assert hit.get("cached") is True, hit
    return times


def _wait(client: Any, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(f"/job/{job_id}").json()["status"] == "succeeded":
            return
        time.sleep(0.01)
    raise TimeoutError(job_id)


def show(title: str, times: dict[str, list[float]]) -> None:
    print(title)
    for name, values in times.items():
        print(f"  {name:40s} median {statistics.median(values):7.1f} ms   p90 {percentile(values, 90):7.1f} ms"
              f"   (n={len(values)})")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="requests per measured variant (default 15)")
    args = parser.parse_args()
    env = {"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_RESULT_CACHE": "true", "TWOPASS_MAX_WAIT_MS": "0"}
    with tempfile.TemporaryDirectory() as logs:
        local = LocalStack(api_port=free_port(), emulator_port=free_port(), workers=1, log_dir=Path(logs), env=env)
        with local:
            log("stack up; measuring")
            show("POST /predict, in-process over the emulator:", overlap(local, args.rounds))
            show("Result cache, over HTTP:", cache(local, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
