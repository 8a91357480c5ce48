"""Hostile geometry and numbers through real HTTP on the local stack.

* Extreme aspect ratios (40000x1 and 30000x2 PNGs of a few hundred bytes): preprocessing once made
  a 10-gigapixel intermediate (28 s, 10 GB), so the API answered 503 at its deadline while the thread
  kept a core busy and the next request failed too. Now each is answered like a small photo, the API
  process's peak resident size barely moves, and the next request is served normally.
* ``GET /jobs`` cursors: a tampered one (a ``t`` of ``1e200``), another caller's, or one from a listing
  with another status filter is a 400 ``invalid_cursor``.
* Open Inference Protocol shapes whose int64 product overflowed or wrapped: a 400 in the protocol's shape.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.helpers import api, own_stack
from twopass.config import DATA_DIR
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e

KEY_A, KEY_B = "seams-a", "seams-b"
#: The API's peak resident size may grow this much over a request (the model's arenas are warm by then).
RSS_GROWTH_LIMIT = 150 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    yield from own_stack(
        tmp_path_factory,
        "seams",
        api_key=f"{KEY_A},{KEY_B}",
    )


def _status_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB: ``VmHWM`` is the peak resident size so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), (40, 160, 90), dtype=np.uint8)).save(out, format="PNG", optimize=True)
    return out.getvalue()


def _predict(client: httpx.Client, image: bytes, content_type: str) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post("/predict", content=image, headers={"Content-Type": content_type}, params={"slow": "never"})
    return response, time.perf_counter() - started


def test_extreme_aspect_ratios_are_answered_like_a_small_photo(stack: LocalStack) -> None:
    pid = stack.procs["api"].pid
    cat = (DATA_DIR / "cat.jpg").read_bytes()
    with api(stack, KEY_A) as client:
        # Warm: the model's session and arenas exist before anything is measured.
        for _ in range(3):
            warm, _ = _predict(client, cat, "image/jpeg")
            assert warm.status_code == 200, warm.text
        normal = min(_predict(client, cat, "image/jpeg")[1] for _ in range(3))
        for width, height in ((40000, 1), (30000, 2)):
            image = _png(width, height)
            assert len(image) < 400, "a few hundred bytes on the wire"
            peak_before = _status_kib(pid, "VmHWM")
            response, elapsed = _predict(client, image, "image/png")
            growth = (_status_kib(pid, "VmHWM") - peak_before) * 1024
            assert response.status_code == 200, response.text
            assert response.json()["efficientnet-lite0"], response.text
            # Before: a 503 after the 6 s deadline. Now the time of a photo, give or take a loaded machine.
            assert elapsed < max(1.0, 10 * normal), (width, height, elapsed, normal)
            assert growth < RSS_GROWTH_LIMIT, f"{width}x{height}: peak RSS grew {growth / 2**20:.0f} MiB"
            # Nothing keeps working behind the answer: the next request is served at once, normally.
            after, after_elapsed = _predict(client, cat, "image/jpeg")
            assert after.status_code == 200, after.text
            assert after_elapsed < max(1.0, 10 * normal), (after_elapsed, normal)


def _listing(client: httpx.Client, **params: str | int | None) -> httpx.Response:
    return client.get("/jobs", params={k: v for k, v in params.items() if v is not None})


def test_a_tampered_or_foreign_cursor_is_a_400(stack: LocalStack) -> None:
    cat = (DATA_DIR / "cat.jpg").read_bytes()
    with api(stack, KEY_A) as alice, api(stack, KEY_B) as bob:
        for client in (alice, alice, alice, bob, bob):
            queued = client.post("/predict", content=cat, headers={"Content-Type": "image/jpeg"})
            assert queued.status_code == 200 and queued.json()["job_id"], queued.text
        first = _listing(alice, limit=1)
        assert first.status_code == 200, first.text
        cursor = first.json()["next_cursor"]
        assert cursor
        # As handed out, it goes on to the next page, for its caller.
        second = _listing(alice, limit=1, cursor=cursor)
        assert second.status_code == 200 and second.json()["jobs"][0]["job_id"] != first.json()["jobs"][0]["job_id"]
        position, tag = cursor.rsplit(".", 1)
        fields = json.loads(base64.urlsafe_b64decode(position + "=" * (-len(position) % 4)))
        forged = base64.urlsafe_b64encode(json.dumps({**fields, "t": "1e200"}).encode()).decode().rstrip("=")
        refused: dict[str, tuple[httpx.Client, dict[str, str]]] = {
            "tampered t": (alice, {"cursor": f"{forged}.{tag}"}),
            "tampered, unsigned": (alice, {"cursor": forged}),
            "another caller's": (bob, {"cursor": cursor}),
            "another status filter": (alice, {"cursor": cursor, "status": "queued"}),
            "garbage": (alice, {"cursor": "bm90IGEgY3Vyc29y"}),
        }
        for what, (client, params) in refused.items():
            response = _listing(client, limit=1, **params)
            assert response.status_code == 400, (what, response.status_code, response.text)
            assert response.json()["error"] == "invalid_cursor", (what, response.text)
        # Bob's own listing is unharmed: his two jobs, and a cursor of his own that works for him.
        mine = _listing(bob, limit=1)
        assert mine.status_code == 200 and mine.json()["next_cursor"]
        assert _listing(bob, limit=1, cursor=mine.json()["next_cursor"]).status_code == 200


@pytest.mark.parametrize(
    "shape",
    [[2**64 + 1], [2**63 + 1, 2**63 + 1], [1202937966811756183, 5987454018051221799], [-1], [2**32, 2**32]],
    ids=["over-uint64", "int64-pair", "wraps-to-one", "negative", "wraps-to-zero"],
)
def test_oip_shapes_that_overflow_int64_are_a_400(stack: LocalStack, shape: list[int]) -> None:
    cat = base64.b64encode((DATA_DIR / "cat.jpg").read_bytes()).decode()
    with api(stack, KEY_A) as client:
        model = client.get("/v2/models/efficientnet-lite0")
        assert model.status_code == 200, model.text
        body = {"inputs": [{"name": "image", "shape": shape, "datatype": "BYTES", "data": [cat]}]}
        response = client.post(
            "/v2/models/efficientnet-lite0/infer",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400, response.text
        assert set(response.json()) == {"error"} and "shape" in response.json()["error"]
        # The same image with its true shape is served: the refusal was the shape's alone.
        ok = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [cat]}]}
        served = client.post(
            "/v2/models/efficientnet-lite0/infer", content=json.dumps(ok), headers={"Content-Type": "application/json"}
        )
        assert served.status_code == 200, served.text
