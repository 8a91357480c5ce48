"""Presigned uploads and waiting reads over real HTTP, against a local stack of its own: the PUT goes to
the emulator's presigned URL, the job to a real worker (started only when a test needs one).

The stack takes two API keys (two tenants), uploads up to 24 MB, and upload URLs that expire after 6 s.
"""

from __future__ import annotations

import io
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
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

KEY_A, KEY_B = "key-a", "key-b"
UPLOAD_MAX = 24_000_000
EXPIRY_SECONDS = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "uploads",
        api_key=f"{KEY_A},{KEY_B}",
        env={
            "TWOPASS_POLL_WAIT_SECONDS": "1",
            "TWOPASS_HEARTBEAT_SECONDS": "1",
            "TWOPASS_UPLOAD_MAX_BYTES": str(UPLOAD_MAX),
            "TWOPASS_UPLOAD_EXPIRY_MINUTES": str(EXPIRY_SECONDS / 60),
        },
    )


@pytest.fixture(scope="module")
def worker(stack: LocalStack) -> Iterator[Callable[[], None]]:
    """Starts the module's one worker when a test first needs it; stops it (SIGTERM) at the end."""
    with workers_on_demand(stack) as start_one:
        started: list[subprocess.Popen[bytes]] = []

        def start() -> None:
            if not started:
                started.append(start_one())

        yield start


def http(stack: LocalStack, key: str = KEY_A) -> httpx.Client:
    return api(stack, key, timeout=60)


@pytest.fixture(scope="module")
def big_photo() -> bytes:
    """A real photo upscaled to 3000×2250 and stored as an uncompressed PNG: about 20 MB."""
    buf = io.BytesIO()
    Image.open(PHOTOS / "chelsea.jpg").resize((3000, 2250)).save(buf, format="PNG", compress_level=0)
    data = buf.getvalue()
    assert 19_000_000 < len(data) < UPLOAD_MAX
    return data


def upload(client: httpx.Client, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    created = client.post("/uploads", json={"content_type": content_type, "content_length": len(data)})
    assert created.status_code == 201, created.text
    grant: dict[str, Any] = created.json()
    put = httpx.request(grant["method"], grant["url"], content=data, headers=grant["headers"], timeout=60)
    assert put.status_code == 200, put.text
    return grant


def test_a_20_mb_photo_goes_through_an_upload_to_a_slow_result(
    stack: LocalStack, worker: Callable[[], None], big_photo: bytes
) -> None:
    worker()
    timings: list[float] = []
    with http(stack) as client:
        for _ in range(3):
            started = time.perf_counter()
            grant = upload(client, big_photo)
            answer = client.post("/predict", json={"upload_id": grant["upload_id"]})
            assert answer.status_code == 200, answer.text
            assert answer.json()["efficientnet-lite0"] in CAT_LABELS
            job_id = answer.json()["job_id"]
            done = final(client, job_id, timeout=120)
            timings.append(time.perf_counter() - started)
            assert done["status"] == "succeeded" and done[job_id]["prediction"] in CAT_LABELS
            again = client.post("/predict", json={"upload_id": grant["upload_id"]})
            assert again.status_code == 200 and again.json()["job_id"] == job_id, "the same upload, the same job"
            assert again.headers["idempotent-replayed"] == "true"
    print(f"\n20 MB upload path (create, PUT, POST /predict, slow result): median {statistics.median(timings):.2f} s")


def test_the_sdk_and_the_cli_upload_a_file_over_the_inline_limit_on_their_own(
    stack: LocalStack, worker: Callable[[], None], big_photo: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    worker()
    with Client(stack.api_url, api_key=KEY_A, timeout=60) as tp:
        result = tp.predict_and_wait(big_photo, timeout=120)
    assert result.succeeded and result.slow is not None and result.slow.label in CAT_LABELS
    path = tmp_path / "big.png"
    path.write_bytes(big_photo)
    code = cli(["--url", stack.api_url, "--api-key", KEY_A, "predict", str(path), "--wait", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert '"succeeded"' in out


def test_an_upload_is_its_owners_pending_until_put_and_gone_once_expired(stack: LocalStack, cat_jpeg: bytes) -> None:
    with http(stack) as client, http(stack, KEY_B) as other:
        created = client.post("/uploads", json={"content_type": "image/jpeg"}).json()
        body = {"upload_id": created["upload_id"]}
        pending = client.post("/predict", json=body)
        assert pending.status_code == 409 and pending.json()["error"] == "upload_pending"
        put = httpx.put(created["url"], content=cat_jpeg, headers=created["headers"])
        assert put.status_code == 200, put.text
        assert other.post("/predict", json=body).status_code == 404, "another tenant's upload is unknown to it"
        assert client.post("/predict", json={"upload_id": "0" * 32}).json()["error"] == "upload_not_found"
        late = client.post("/uploads", json={"content_type": "image/jpeg"}).json()
        time.sleep(EXPIRY_SECONDS + 1)
        expired = client.post("/predict", json={"upload_id": late["upload_id"]})
        assert expired.status_code == 404 and expired.json()["error"] == "upload_not_found"
        # (S3 refuses a PUT past the URL's expiry; the emulator checks no signatures, so that is not tested here.)
        assert client.post("/predict", json=body).status_code == 200, "an upload PUT in time outlives its URL"


def test_uploads_over_the_size_limit_are_413(stack: LocalStack, big_photo: bytes) -> None:
    oversized = big_photo + b"\0" * (UPLOAD_MAX - len(big_photo) + 1)
    with http(stack) as client:
        said = client.post("/uploads", json={"content_type": "image/png", "content_length": len(oversized)})
        assert said.status_code == 413 and said.json()["error"] == "payload_too_large"
        # S3 cannot cap a presigned PUT's size: a client that does not say it is refused when it uses it.
        quiet = client.post("/uploads", json={"content_type": "image/png"}).json()
        assert httpx.put(quiet["url"], content=oversized, headers=quiet["headers"], timeout=60).status_code == 200
        used = client.post("/predict", json={"upload_id": quiet["upload_id"]})
        assert used.status_code == 413 and used.json()["error"] == "payload_too_large"
        assert client.post("/uploads", json={"content_type": "text/html"}).status_code == 422


def test_wait_answers_at_n_for_a_queued_job_and_early_once_it_ends(
    stack: LocalStack, worker: Callable[[], None]
) -> None:
    with http(stack) as client:
        job_id = client.get("/predict/test").json()["job_id"]
        started = time.monotonic()
        held = client.get(f"/job/{job_id}", params={"wait": 2})
        took = time.monotonic() - started
        if held.json()["status"] in ("queued", "running"):  # no worker yet: the wait runs out
            assert 2.0 <= took < 3.5, took
        worker()
        job_id = client.get("/predict/test").json()["job_id"]
        started = time.monotonic()
        done = client.get(f"/job/{job_id}", params={"wait": 20})
        took = time.monotonic() - started
        assert done.json()["status"] == "succeeded", done.text
        assert took < 15, f"answered {took:.1f} s after asking, not at the end of the 20 s wait"
        assert client.get(f"/job/{job_id}", params={"wait": 21}).status_code == 422
