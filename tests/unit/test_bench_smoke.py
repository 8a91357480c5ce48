"""Every section of ``make bench`` runs to its end: ``bench/run.py --smoke`` (each section at its smallest
size: a handful of requests, one round), writing into a temp dir.

A smoke run's figures mean nothing; what is checked is that each section finished without an error and
produced its figures (the keys the report and the targets read, positive numbers), and that the run
wrote nothing into ``bench/results/`` or the package's ``measured.json``. The run is a subprocess, as
``make bench`` starts it: the sections set environment variables, CPU affinity and log handlers that
must not leak into the tests around it.

The sections run in three subprocesses, one per test file, so that the test runner's workers share
them: here the paths (``slow``, ``fast``, ``cold``, ``side``, ``overhead``); ``test_bench_smoke_devices.py`` the
``peers`` and ``gpu`` sections; ``tests/e2e/test_bench_smoke_stack.py`` the two that start the local
stack (``capacity``, ``stack``). Peers that are not installed here (BentoML's venv, gibbs: ``make
bench`` installs them) are skipped with the reason the section gave.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.sections import SECTIONS
from twopass.config import REPO_ROOT

# Each fixture's run takes 1 to 2 minutes on 2 busy cores; its subprocess gives up after 10.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: Each test file's sections: the paths (here), the peers and the GPU check, the local stack's.
PATHS = ("slow", "fast", "cold", "side", "overhead")
DEVICES = ("peers", "gpu")
LOCAL_STACK = ("capacity", "stack")
#: Each section's key in latest.json.
RESULT_KEYS = {
    "slow": "slow_path",
    "fast": "fast_path",
    "cold": "cold_start",
    "side": "side_by_side",
    "peers": "peers",
    "gpu": "gpu",
    "capacity": "capacity",
    "overhead": "overhead",
    "stack": "stack",
}
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MEASURED_JSON = REPO_ROOT / "layers" / "twopass" / "twopass" / "data" / "measured.json"


def _untouched(sections: tuple[str, ...]) -> dict[str, str]:
    """What the run must leave as it is: whatever bench/run.py writes into bench/results/ by default
    (its latest outputs, a dated summary, a server's log), and measured.json. Only these: other tools
    (``bench/side_by_side.py`` …) may write their own files there meanwhile."""
    today = time.strftime("%Y-%m-%d", time.gmtime())
    names = ("latest.*", "latest-*", f"{today}.md", f"{today}-{'-'.join(sections)}.md", ".server.*")
    paths = [MEASURED_JSON, *(p for name in names for p in RESULTS_DIR.glob(name))]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths if p.is_file()}


def smoke_run(sections: tuple[str, ...], out: Path) -> dict[str, Any]:
    before = _untouched(sections)
    args = [sys.executable, "bench/run.py", "--smoke", "--only", ",".join(sections), "--out", str(out)]
    proc = subprocess.run(args, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert _untouched(sections) == before, "the smoke run wrote into bench/results/ or measured.json"
    assert sorted(p.name for p in out.iterdir() if p.suffix != ".png") == ["latest.json", "latest.md"]
    results: dict[str, Any] = json.loads((out / "latest.json").read_text())
    # A failed section is reported as <name>_error in the results, and the run still exits 0.
    errors = {k: v for k, v in results.items() if k.endswith("_error")}
    assert errors == {}, f"{errors}\n{proc.stderr[-5000:]}"
    assert results["meta"]["smoke"] is True and "smoke" in (out / "latest.md").read_text()
    return results


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return smoke_run(PATHS, tmp_path_factory.mktemp("bench-smoke"))


def _walk(data: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _walk(value, f"{path}.{key}" if path else str(key))
    else:
        yield path, data


def positive(section: dict[str, Any], *paths: str) -> None:
    """Each dotted path is in ``section`` and holds a number above zero."""
    flat = dict(_walk(section))
    for path in paths:
        assert path in flat, f"{path} missing"
        value = flat[path]
        assert isinstance(value, int | float) and not isinstance(value, bool), f"{path} = {value!r}"
        assert value > 0, f"{path} = {value!r}"


def test_the_smoke_runs_cover_every_section() -> None:
    assert sorted(PATHS + DEVICES + LOCAL_STACK) == sorted(SECTIONS) == sorted(RESULT_KEYS)


def test_every_section_reports_its_time(own_servers: dict[str, Any]) -> None:
    for name in PATHS:
        positive(own_servers[RESULT_KEYS[name]], "section_seconds")
    assert own_servers["meta"]["sections"] == list(PATHS)


def test_slow_path(own_servers: dict[str, Any]) -> None:
    slow = own_servers["slow_path"]
    positive(
        slow,
        "memory.raw_infer_best",
        "memory.raw_pipeline",
        "memory.worker_memory",
        "memory.one_at_a_time_memory",
        "lone_job.worker.p50_ms",
        "lone_job.raw_single_job.p50_ms",
        "moto.emulator_drain_msgs_per_s",
        "moto.worker.images_per_s",
        "moto.one_at_a_time.images_per_s",
        "ratios.worker_vs_raw_infer_best",
        "ratios.worker_vs_one_at_a_time",
        "ratios.moto_worker_vs_moto_one_at_a_time",
    )
    assert set(slow["raw_infer_images_per_s"]) >= {"1x2t_b1", "2x1t_b2"}


def test_fast_path(own_servers: dict[str, Any]) -> None:
    fast = own_servers["fast_path"]
    positive(fast, *(f"c1.{path}.p50_ms" for path in ("raw", "handler_moto", "handler_memory", "http")))
    positive(fast, "raw.c10.throughput_rps", "http.c10.throughput_rps", "http.burst10_wall_ms")
    positive(fast, *(f"ratios.{name}" for name in fast["ratios"]))


def test_cold_start(own_servers: dict[str, Any]) -> None:
    cold = own_servers["cold_start"]
    positive(cold, *(f"median.{k}" for k in ("init_s", "model_load_s", "first_answer_s", "total_s")))
    positive(cold, "importtime.init_total_s")


def test_side_by_side(own_servers: dict[str, Any]) -> None:
    side = own_servers["side_by_side"]
    positive(side, "c1.raw.p50_ms", "c1.twopass.p50_ms", "c10_rps.raw", "c10_rps.twopass")
    positive(
        side, *(f"ratios.twopass.{k}" for k in ("c1_p50_vs_raw", "c10_throughput_vs_raw", "c10_cpu_efficiency_vs_raw"))
    )
    positive(
        side, "cold_start.twopass_vs_floor", "cold_start.twopass.median.total_s", "cold_start.floor.median.total_s"
    )
    assert side["bentoml"].startswith("not measured")  # a smoke run installs no peer
    names = [t["name"] for t in own_servers["targets"]]
    assert "side by side: C=10 req/s ÷ raw onnxruntime" in names and "cold start, in-memory backends (s)" in names


def test_overhead(own_servers: dict[str, Any]) -> None:
    over = own_servers["overhead"]
    positive(over, *(f"c1.{path}.p50_ms" for path in ("raw", "handler", "http_twopass", "http_bare")))
    positive(over, "ratios.http_vs_bare", "ratios.handler_vs_raw")


def test_targets_cover_the_sections_run(own_servers: dict[str, Any]) -> None:
    names = " ".join(t["name"] for t in own_servers["targets"])
    for part in ("worker / raw", "handler p50 / raw p50", "HTTP c=10 throughput", "cold start", "bare FastAPI"):
        assert part in names
