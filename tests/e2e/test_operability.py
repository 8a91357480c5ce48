"""Follow one job through the API's and the worker's JSON logs; receive its signed callback."""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.conftest import CAT_LABELS
from twopass.local.stack import LOCAL_DEFAULTS, LocalStack
from twopass.notify import SIGNATURE_HEADER, verify

pytestmark = pytest.mark.e2e


def auth(stack: LocalStack) -> dict[str, str]:
    return {"x-api-key": stack.api_key or ""}


def records(path: Any) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_for(predicate: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_one_job_id_through_api_and_worker_logs(stack: LocalStack, cat_jpeg: bytes) -> None:
    assert stack.log_dir is not None
    headers = {**auth(stack), "x-request-id": "req-follow-me", "Content-Type": "image/jpeg"}
    job_id = httpx.post(f"{stack.api_url}/predict", content=cat_jpeg, headers=headers, timeout=30).json()["job_id"]

    def api_record() -> dict[str, Any] | None:
        return next((r for r in records(stack.log_dir / "api.log") if r.get("job_id") == job_id), None)

    def worker_record() -> dict[str, Any] | None:
        for path in stack.log_dir.glob("worker-*.log"):
            for r in records(path):
                if r.get("job_id") == job_id and "succeeded" in str(r.get("message")):
                    return r
        return None

    api = wait_for(api_record)
    worker = wait_for(worker_record)
    for record in (api, worker):
        assert record["request_id"] == "req-follow-me"
        assert record["correlation_id"] == job_id
        assert record["level"] in ("INFO", "WARNING")
    assert api["service"] == "twopass-api" and worker["service"] == "twopass-worker"


class _Receiver(BaseHTTPRequestHandler):
    received: queue.Queue[tuple[bytes, dict[str, str]]] = queue.Queue()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.put((body, dict(self.headers)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_callback_is_delivered_signed(stack: LocalStack, cat_jpeg: bytes) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks/twopass"
        response = httpx.post(
            f"{stack.api_url}/predict",
            json={"image_data": base64.b64encode(cat_jpeg).decode(), "callback_url": url},
            headers=auth(stack),
            timeout=30,
        )
        assert response.status_code == 200
        job_id = response.json()["job_id"]
        body, headers = _Receiver.received.get(timeout=30)
    finally:
        server.shutdown()
    # How a receiver checks it: the raw body, the header, the deployment's secret.
    assert verify(LOCAL_DEFAULTS["TWOPASS_CALLBACK_SECRET"], body, headers[SIGNATURE_HEADER])
    assert not verify("wrong-secret", body, headers[SIGNATURE_HEADER])
    payload = json.loads(body)
    assert payload["job_id"] == job_id and payload["status"] == "succeeded"
    assert payload["prediction"] in CAT_LABELS


def test_bad_callback_url_is_a_400(stack: LocalStack, cat_jpeg: bytes) -> None:
    response = httpx.post(
        f"{stack.api_url}/predict?callback_url=ftp://example.com/x",
        content=cat_jpeg,
        headers={**auth(stack), "Content-Type": "image/jpeg"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_callback_url"
