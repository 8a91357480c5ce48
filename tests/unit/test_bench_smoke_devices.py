"""``make bench``'s ``peers`` and ``gpu`` sections at their smallest size (``test_bench_smoke.py`` says how)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from tests.unit.test_bench_smoke import DEVICES, positive, smoke_run
from twopass.config import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return smoke_run(DEVICES, tmp_path_factory.mktemp("bench-smoke-devices"))


def test_peers_twopass_side(own_servers: dict[str, Any]) -> None:
    peers = own_servers["peers"]
    positive(peers, "twopass.c1.p50_ms", "twopass.c10.throughput_rps", "twopass.burst10_wall_ms")
    assert peers["twopass"]["failed_requests"] == 0


def _installed(peer: str) -> bool:
    if peer == "bentoml":
        return (REPO_ROOT / ".venv-bench-bento" / "bin" / "bentoml").exists()
    return all(importlib.util.find_spec(name) is not None for name in ("gibbs", "zmq"))


@pytest.mark.parametrize("peer", ["bentoml", "gibbs"])
def test_peers_measured_when_installed(own_servers: dict[str, Any], peer: str) -> None:
    peers = own_servers["peers"]
    if not _installed(peer):
        pytest.skip(f"{peer} is not installed here: {peers.get(f'{peer}_error')}")
    assert f"{peer}_error" not in peers
    positive(peers, f"{peer}.c1.p50_ms", f"{peer}.c10.throughput_rps", f"ratios.throughput_c10_twopass_vs_{peer}")


def test_gpu(own_servers: dict[str, Any]) -> None:
    gpu = own_servers["gpu"]
    # Without a usable CUDA provider the section runs on the CPU, and says so.
    assert gpu["gpu"] or gpu["provider"] == "CPUExecutionProvider"
    for precision in ("fp32", "fp16"):
        assert [row["batch"] for row in gpu["throughput"][precision]] == [1, 8]
        for row in gpu["throughput"][precision]:
            positive(row, "twopass_images_per_s", "raw_images_per_s")
    positive(gpu, "latency.fp32.p50_ms", "fp16.cpu_images_per_s_batch8.fp32", "fp16.photos", "fp16.views")
