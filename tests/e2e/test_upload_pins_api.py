"""An accepted image never changes, over real HTTP against a local stack of its own: a photo sent again
to an upload's URL after its job was accepted, an oversized object behind a job's reference, and a
retry right after a cancel (raw HTTP, the SDK and the CLI, and the docs' example as written).

The stack starts with no worker: each test starts one when its jobs may run, so what is queued meanwhile
stays queued.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import CAT_LABELS, PHOTOS
from tests.e2e.helpers import api, final, own_stack, workers_on_demand
from twopass.cli import main as cli
from twopass.client import Client
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e

KEY, DOCS_KEY = "pins-key", "docs-key"
#: The default uploads' limit (50 MiB), and the object put behind a job in the findings: 60.6 MiB.
UPLOAD_MAX = 50 * 1024 * 1024
OVERSIZED = int(60.6 * 1024 * 1024)
#: What the worker may grow by while it refuses the oversized object (it would be over 60 MB read whole).
RSS_SLACK_KB = 20 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "pins",
        api_key=f"{KEY},{DOCS_KEY}",
        env={"TWOPASS_POLL_WAIT_SECONDS": "1", "TWOPASS_HEARTBEAT_SECONDS": "1"},
    )


def http(stack: LocalStack) -> httpx.Client:
    return api(stack, KEY, timeout=60)


def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def big_png(name: str) -> bytes:
    """A photo as an uncompressed PNG over the inline limit (4 MiB): it can only come as an upload."""
    buf = io.BytesIO()
    Image.open(PHOTOS / name).convert("RGB").resize((1400, 1050)).save(buf, format="PNG", compress_level=0)
    assert len(buf.getvalue()) > 4 * 1024 * 1024
    return buf.getvalue()


def post_form(grant: dict[str, Any], data: bytes, content_type: str = "image/png") -> httpx.Response:
    post = grant["post"]
    return httpx.post(post["url"], data=post["fields"], files={"file": ("image", data, content_type)}, timeout=60)


def put(grant: dict[str, Any], data: bytes) -> httpx.Response:
    headers = {"Content-Type": grant["headers"]["Content-Type"]}
    return httpx.put(grant["url"], content=data, headers=headers, timeout=60)


def new_upload(client: httpx.Client, content_type: str = "image/png") -> dict[str, Any]:
    created = client.post("/uploads", json={"content_type": content_type})
    assert created.status_code == 201, created.text
    grant: dict[str, Any] = created.json()
    return grant


def rss_kb(pid: int, field: str = "VmHWM") -> int:
    """A process's peak (``VmHWM``) or current (``VmRSS``) resident memory, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_photo_sent_again_after_its_job_was_accepted_is_never_what_the_slow_pass_answers(
    stack: LocalStack,
) -> None:
    cat, coffee = big_png("chelsea.jpg"), big_png("coffee.jpg")
    with http(stack) as client, workers_on_demand(stack) as start_worker:
        grant = new_upload(client)
        sent = post_form(grant, cat)
        assert sent.status_code == 204, sent.text
        accepted = client.post("/predict", json={"upload_id": grant["upload_id"]})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json()["efficientnet-lite0"] in CAT_LABELS
        job_id = accepted.json()["job_id"]
        # While the job waits in the queue, the client sends another photo through both of its URLs.
        assert post_form(grant, coffee).status_code == 204
        assert put(grant, coffee).status_code == 200
        start_worker()
        done = final(client, job_id)
        assert done["status"] == "failed", done
        assert "replaced after its job was accepted" in done["error"], done["error"]
        assert done[job_id]["prediction"] is None and done["slow"] is None, "no label for the second photo"
        retry = client.post(f"/job/{job_id}/retry")
        assert retry.status_code == 409 and retry.json()["error"] == "image_changed", retry.text
        again = client.post("/predict", json={"upload_id": grant["upload_id"]})
        assert again.json()["job_id"] == job_id, "the upload is still that one job"


def test_the_presigned_post_is_what_the_sdk_and_cli_use_and_s3_is_told_the_cap(
    stack: LocalStack, tmp_path: Path
) -> None:
    with http(stack) as client:
        grant = new_upload(client)
    # The emulator does not enforce a POST policy; S3 does, by what the policy says.
    policy = json.loads(base64.b64decode(grant["post"]["fields"]["policy"]))
    assert ["content-length-range", 1, UPLOAD_MAX] in policy["conditions"]
    assert {"key": grant["post"]["fields"]["key"]} in policy["conditions"]
    requests: list[str] = []
    with (
        workers_on_demand(stack) as start_worker,
        Client(stack.api_url, api_key=KEY, timeout=60) as tp,
    ):
        tp._http.event_hooks["request"].append(lambda r: requests.append(f"{r.method} {r.url.path}"))
        start_worker()
        result = tp.predict_and_wait(big_png("chelsea.jpg"), timeout=90)
        assert result.succeeded and result.slow is not None and result.slow.label in CAT_LABELS
    bucket = stack.resources["PayloadBucket"]
    assert requests[1:4] == ["POST /uploads", f"POST /{bucket}", "POST /predict"], requests
    assert not [r for r in requests if r.startswith("PUT ")], "the POST, not the PUT"
    path = tmp_path / "big.png"
    path.write_bytes(big_png("coffee.jpg"))
    assert cli(["--url", stack.api_url, "--api-key", KEY, "predict", str(path)]) == 0


def test_an_oversized_object_behind_a_job_is_refused_on_retry_and_by_the_worker_unread(
    stack: LocalStack,
) -> None:
    s3, bucket = stack.client("s3"), stack.resources["PayloadBucket"]
    oversized = b"\xff\xd8\xff" + b"\0" * (OVERSIZED - 3)
    with http(stack) as client:
        grant = new_upload(client)
        assert post_form(grant, big_png("chelsea.jpg")).status_code == 204
        job_id = client.post("/predict", json={"upload_id": grant["upload_id"]}).json()["job_id"]
        assert client.delete(f"/job/{job_id}").json()["status"] == "cancelled"
        # S3 takes a PUT of any size (the POST's policy would refuse it): 60.6 MiB behind the job's upload.
        assert put(grant, oversized).status_code == 200
        retry = client.post(f"/job/{job_id}/retry")
        assert retry.status_code == 409 and retry.json()["error"] == "image_changed", retry.text
        assert client.get(f"/job/{job_id}").json()["status"] == "cancelled", "nothing re-queued"
        with workers_on_demand(stack) as start_worker:
            worker = start_worker()
            # A claim-checked job first: the worker's model warm, its S3 client made, a photo decoded.
            warm = client.post("/predict", content=_jpeg_over_256k(), headers={"content-type": "image/jpeg"})
            assert final(client, warm.json()["job_id"])["status"] == "succeeded"
            before = rss_kb(worker.pid)
            # A claim check the worker reads by an unpinned reference, replaced while the worker is frozen.
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                claim = client.post("/predict", content=_jpeg_over_256k(), headers={"content-type": "image/jpeg"})
                assert claim.status_code == 200, claim.text
                claimed = claim.json()["job_id"]
                s3.put_object(Bucket=bucket, Key=f"payloads/{claimed}", Body=oversized)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            done = final(client, claimed)
            after = rss_kb(worker.pid)
        assert done["status"] == "failed" and f"is {OVERSIZED} bytes" in done["error"], done["error"]
        print(f"\nworker peak RSS with a {OVERSIZED / 2**20:.1f} MiB object behind a job: {before} -> {after} KiB")
        assert after - before < RSS_SLACK_KB, "the oversized object was not read"


def _jpeg_over_256k() -> bytes:
    """A JPEG over the inline message limit (256 KiB), so it travels to the worker as a claim check."""
    buf = io.BytesIO()
    Image.open(PHOTOS / "chelsea.jpg").convert("RGB").resize((1600, 1200)).save(buf, format="JPEG", quality=98)
    assert 256 * 1024 < len(buf.getvalue()) < 4 * 1024 * 1024
    return buf.getvalue()


def test_retry_right_after_cancel_is_409_image_pending_then_runs_once_a_worker_kept_the_image(
    stack: LocalStack, cat_jpeg: bytes
) -> None:
    with http(stack) as client:
        job_id = client.post("/predict", content=cat_jpeg, headers={"content-type": "image/jpeg"}).json()["job_id"]
        assert client.delete(f"/job/{job_id}").status_code == 200
        pending = client.post(f"/job/{job_id}/retry")
        assert pending.status_code == 409 and pending.json()["error"] == "image_pending", pending.text
        assert pending.headers["retry-after"] == "1"
        outcome: dict[str, Any] = {}

        def sdk_retry() -> None:
            with Client(stack.api_url, api_key=KEY, timeout=30) as tp:
                started = time.monotonic()
                outcome["result"] = tp.retry(job_id)  # asks again after each Retry-After
                outcome["took"] = time.monotonic() - started

        retrying = threading.Thread(target=sdk_retry)
        retrying.start()
        time.sleep(2)  # the SDK is asking, and told to wait
        with workers_on_demand(stack) as start_worker:
            start_worker()  # meets the cancelled job's message and keeps its image
            retrying.join(150)
            assert outcome["result"].status in ("queued", "running", "succeeded"), outcome
            done = final(client, job_id)
        assert done["status"] == "succeeded" and done[job_id]["prediction"] in CAT_LABELS
        assert [h["status"] for h in done["history"]] == ["cancelled"]
        print(f"\nSDK retry right after a cancel answered after {outcome['took']:.1f} s (worker started at 2 s)")


def test_the_docs_cancel_then_retry_example_works_as_written(stack: LocalStack) -> None:
    """docs/clients.md's job-control example as written (a key of its own, so its jobs are the only ones)."""
    with workers_on_demand(stack) as start_worker:
        start_worker()
        started = time.monotonic()
        with Client(stack.api_url, api_key=DOCS_KEY) as tp:
            urgent = tp.predict(str(PHOTOS / "coffee.jpg"), priority="high", deadline_seconds=300)
            tp.cancel(urgent)  # BadRequestError(409, "job_final") if it had ended
            for page in tp.jobs(status="cancelled", limit=50):
                for job in page:
                    tp.retry(job)  # queued again, same id; history keeps the cancel
            took = time.monotonic() - started
            done = tp.wait(urgent, timeout=60)
        assert done.succeeded and [h.status for h in done.history] == ["cancelled"]
        print(f"\ndocs example (predict, cancel, retry) took {took:.1f} s")
        code = cli(["--url", stack.api_url, "--api-key", DOCS_KEY, "retry", done.job_id])
        assert code == 1, "a success is never rerun (the CLI says so)"
