"""The SDK and the CLI against the real local stack over HTTP: moto server, the API under uvicorn and
one worker running the real models, all on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from tests.conftest import CAT_LABELS, PHOTOS
from twopass.cli import main
from twopass.client import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    BatchItemError,
    Client,
    JobResult,
    NotFoundError,
    NotTwopassError,
)
from twopass.local.stack import LocalStack, free_port

pytestmark = pytest.mark.e2e

COFFEE_LABELS = frozenset({"espresso", "cup", "coffee mug", "eggnog"})


def test_sync_client_predicts_and_waits(stack: LocalStack) -> None:
    with Client(stack.api_url) as client:
        assert client.health().ok
        prediction = client.predict(PHOTOS / "chelsea.jpg")
        assert prediction.label in CAT_LABELS
        assert len(prediction.top_k) == 5
        assert prediction.status == "queued"
        result = client.wait(prediction, timeout=30)
        assert result.succeeded
        assert result.label in CAT_LABELS
        assert result.slow is not None
        assert result.slow.model != prediction.fast.model
        assert result.finished_at is not None
        assert result.created_at is not None
        assert result.finished_at >= result.created_at

        again = client.predict_and_wait((PHOTOS / "chelsea.jpg").read_bytes(), timeout=30)
        assert again.label in CAT_LABELS
        assert again.job_id != result.job_id


def test_sync_client_maps_real_errors(stack: LocalStack) -> None:
    with Client(stack.api_url) as client:
        with pytest.raises(NotFoundError) as missing:
            client.job("0" * 32)
        assert missing.value.code == "not_found"
        assert missing.value.attempts == 1
        with pytest.raises(BadRequestError) as bad:
            client.predict(b"these bytes are not an image")
        assert bad.value.status == 400
        assert bad.value.detail
        health = client.health_all()
        assert health.ok, health.backends
        metadata = client.metadata()
        assert set(metadata["models"]) == {"fast", "slow"}


def test_async_client_gathers_three_images(stack: LocalStack) -> None:
    names = ["chelsea.jpg", "coffee.jpg", "astronaut.jpg"]

    async def run() -> list[JobResult]:
        async with AsyncClient(stack.api_url) as client:
            return await asyncio.gather(*(client.predict_and_wait(PHOTOS / name, timeout=30) for name in names))

    results = asyncio.run(run())
    assert all(r.succeeded for r in results)
    assert len({r.job_id for r in results}) == 3
    assert results[0].label in CAT_LABELS
    assert results[1].label in COFFEE_LABELS


def test_cli_predicts_a_folder_of_photos(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(["--url", stack.api_url, "predict", str(PHOTOS), "--wait", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {Path(row["file"]).name: row for row in map(json.loads, out.splitlines())}
    assert set(rows) == {p.name for p in PHOTOS.glob("*.jpg")}
    for row in rows.values():
        assert row["status"] == "succeeded"
        assert row["fast"]["label"]
        assert row["slow"]["label"]
        assert len(row["job_id"]) == 32
    assert rows["chelsea.jpg"]["fast"]["label"] in CAT_LABELS
    assert rows["chelsea.jpg"]["slow"]["label"] in CAT_LABELS
    assert time.monotonic() - started < 30


def test_cli_table_then_job(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", stack.api_url, "predict", str(PHOTOS / "chelsea.jpg")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["FILE", "FAST", "JOB", "STATUS"]
    job_id = table[1].split()[-2]
    assert main(["--url", stack.api_url, "job", job_id, "--wait", "--timeout", "30"]) == 0
    assert "succeeded" in capsys.readouterr().out


def test_cli_job_unknown_exits_1(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", stack.api_url, "job", "f" * 32]) == 1
    assert "unknown or expired" in capsys.readouterr().err


def test_cli_health_exits_0(stack: LocalStack, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--url", stack.api_url, "health"]) == 0
    assert main(["--url", stack.api_url, "health", "--all"]) == 0
    assert capsys.readouterr().out.startswith("ok")


def test_cli_unreachable_url_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    # Default retries: what a user gets, a few seconds of backoff and then a clear message.
    assert main(["--url", f"http://127.0.0.1:{free_port()}", "health"]) == 3
    assert "cannot reach twopass" in capsys.readouterr().err


def test_cli_and_sdk_errors_against_the_real_api(
    stack: LocalStack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The hints rest on the API's real answers: its 403 without a key and its 404 for a path it lacks.
    key = os.environ["TWOPASS_API_KEY"]
    monkeypatch.delenv("TWOPASS_API_KEY")
    assert main(["--url", stack.api_url, "predict", str(PHOTOS)]) == 5
    out, err = capsys.readouterr()
    assert err.count("twopass: error:") == 1
    assert "no API key was sent: pass --api-key or set TWOPASS_API_KEY" in err
    assert "forbidden" not in out

    wrong = f"{stack.api_url}/v1"
    assert main(["--url", wrong, "--api-key", key, "health", "--all"]) == 3
    assert main(["--url", wrong, "--api-key", key, "job", "0" * 32]) == 3
    err = capsys.readouterr().err
    assert (
        err.count(f"twopass: error: the server at {wrong} does not look like a twopass API (got 404 on GET /v1/") == 2
    )
    with Client(wrong, api_key=key) as client, pytest.raises(NotTwopassError) as info:
        client.predict(PHOTOS / "chelsea.jpg")
    assert "check base_url (or TWOPASS_URL)" in str(info.value)
    with Client(stack.api_url, api_key="not-the-key") as client, pytest.raises(AuthenticationError) as refused:
        client.health_all()
    assert "the API key was refused" in str(refused.value)


def test_predict_many_and_the_cli_send_batches(
    stack: LocalStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [PHOTOS / "chelsea.jpg", b"these bytes are not an image", PHOTOS / "coffee.jpg"]
    with Client(stack.api_url) as client:
        results = client.predict_many_and_wait(images, timeout=60)
    assert isinstance(results[1], BatchItemError) and results[1].index == 1 and results[1].code == "invalid_image"
    assert isinstance(results[0], JobResult) and results[0].succeeded and results[0].label in CAT_LABELS
    assert isinstance(results[2], JobResult) and results[2].succeeded and results[2].label in COFFEE_LABELS

    # Nine files: the CLI sends them as one batch, and prints a row for each.
    for n in range(9):
        photo = sorted(PHOTOS.glob("*.jpg"))[n % 3]
        (tmp_path / f"{n}-{photo.name}").write_bytes(photo.read_bytes())
    code = main(["--url", stack.api_url, "predict", str(tmp_path), "--wait", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 9 and all(row["status"] == "succeeded" and row["slow"]["label"] for row in rows)
    assert len({row["job_id"] for row in rows}) == 9
    assert stack.log_dir is not None
    assert "batch of 9: 9 jobs" in (stack.log_dir / "api.log").read_text(), "the nine files went as one POST /batches"
