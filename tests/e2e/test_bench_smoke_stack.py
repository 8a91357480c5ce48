"""``make bench``'s two local-stack sections (``capacity``, ``stack``) at their smallest size
(``tests/unit/test_bench_smoke.py`` says how)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_bench_smoke import LOCAL_STACK, positive, smoke_run
from twopass.config import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return smoke_run(LOCAL_STACK, tmp_path_factory.mktemp("bench-smoke-stack"))


def test_capacity(local_stack: dict[str, Any]) -> None:
    cap = local_stack["capacity"]
    eight = next(row for row in cap["calls"]["summary"] if row["batch_size"] == 8)
    positive(eight, "dynamodb_writes", "sqs_requests")
    positive(cap, "handler.predict_p50_ms", "handler.job_p50_ms", "section_seconds")
    (row,) = cap["validation"]["rows"]
    positive(row, "jobs", "rate", "measured_p50_s", "predicted_p50_s", "ratio_p50")
    positive(cap["measured"], "cpu_images_per_second", "handler_ms_predict")
    assert sum(cap["measured"]["api_calls"].values()) > 0 and sum(cap["measured"]["worker_calls"].values()) > 0
    assert cap["cost"]["cpu_example"]["markdown"]


def test_stack(local_stack: dict[str, Any]) -> None:
    stack = local_stack["stack"]
    for name in ("before", "now"):
        positive(stack, f"{name}.c1_p50_ms", f"{name}.c1_rps", f"{name}.c10_rps")
    positive(stack, "c10_throughput_ratio", "c1_p50_ratio", "section_seconds")
    # Compared with itself: no earlier commit is checked out by a smoke run.
    assert stack["before_commit"] == str(REPO_ROOT)
