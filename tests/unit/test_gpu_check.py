"""``python bench/gpu_check.py`` runs in one command, and on a machine without a GPU says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from twopass.config import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_gpu_check_runs_on_the_cpu_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), "--seconds", "0.05", "--batches", "1,2",
         "--latency-batch", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=240, check=False, cwd=tmp_path,  # a script: no repo on sys.path
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("NO GPU:") and "CPU figure" in lines[0]
    assert lines[1].startswith("provider: CPUExecutionProvider")
    result = json.loads(out.read_text())
    assert result["gpu"] is False
    for precision in ("fp32", "fp16"):
        rows = result["throughput"][precision]
        assert [r["batch"] for r in rows] == [1, 2]
        assert all(r["twopass_images_per_s"] > 0 and r["raw_images_per_s"] > 0 for r in rows)
    assert result["fp16"]["top1_agreement"] >= 0.75  # fp16 and fp32 agree on the photos
    latency = result["latency"]["fp32"]
    assert latency["batch"] == 2 and latency["runs"] >= 20 and latency["p99_ms"] >= latency["p50_ms"] > 0
    assert any(line.startswith("fp32 batch of 2: p50 ") and ", p99 " in line for line in lines)
