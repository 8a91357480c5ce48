"""Cold start: fresh interpreters importing the Lambda handler and answering one real event."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.common import BENCH, child_env, deployed_bytecode, log, median, moto_server, provision_moto

CHILD = BENCH / "cold_child.py"


@dataclass(frozen=True)
class ColdConfig:
    repeats: int = 5


def _spawn(env: dict[str, str], *, python_flags: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    t_spawn = time.time()
    args = [sys.executable, *python_flags, str(CHILD)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"cold start child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT "))
    data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    data["interpreter_start_s"] = data["wall_start"] - t_spawn
    data["total_s"] = data["wall_end"] - t_spawn
    return data, proc.stderr


_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")
#: Import-time groups worth naming; everything else is "other".
_GROUPS = {
    "fastapi": "fastapi", "starlette": "fastapi", "pydantic": "pydantic", "pydantic_core": "pydantic",
    "boto3": "boto3/botocore", "botocore": "boto3/botocore", "s3transfer": "boto3/botocore",
    "dateutil": "boto3/botocore", "urllib3": "boto3/botocore", "jmespath": "boto3/botocore",
    "onnxruntime": "onnxruntime", "numpy": "numpy", "PIL": "pillow", "mangum": "mangum",
    "twopass": "twopass", "anyio": "fastapi", "typing_extensions": "pydantic", "annotated_types": "pydantic",
}  # fmt: skip


def importtime_breakdown(stderr: str) -> dict[str, Any]:
    """Self import time summed by package group, split into the init and first-request phases."""
    phases: dict[str, dict[str, float]] = {"init": defaultdict(float), "first_request": defaultdict(float)}
    phase = "init"
    for line in stderr.splitlines():
        if line.startswith("MARK init-done"):
            phase = "first_request"
            continue
        m = _LINE.match(line)
        if m:
            group = _GROUPS.get(m.group(4).split(".")[0], "other (stdlib, …)")
            phases[phase][group] += int(m.group(1)) / 1e6
    out: dict[str, Any] = {}
    for name, table in phases.items():
        ranked = sorted(table.items(), key=lambda kv: kv[1], reverse=True)
        out[name] = {k: round(v, 3) for k, v in ranked}
        out[f"{name}_total_s"] = round(sum(table.values()), 3)
    return out


def run(config: ColdConfig) -> dict[str, Any]:
    result: dict[str, Any] = {"config": config.__dict__}
    with moto_server() as endpoint:
        env = deployed_bytecode(
            child_env(
                {
                    **provision_moto(endpoint),
                    "AWS_ENDPOINT_URL": endpoint,
                    "AWS_LAMBDA_FUNCTION_NAME": "twopass-ApiFunction",
                    "TWOPASS_PROVIDERS": "cpu",
                    # The template's default (ApiTracing=false); moto's provisioning leaves the Fn::If unresolved.
                    "POWERTOOLS_TRACE_DISABLED": "true",
                }
            )
        )
        _spawn(env)  # page cache warm (a Lambda's layer is on local disk too), bytecode compiled
        keys = ("interpreter_start_s", "init_s", "model_load_s", "first_answer_s", "total_s", "second_answer_s")
        runs = []
        for _ in range(config.repeats):
            data, _ = _spawn(env)
            runs.append({k: data[k] for k in keys})
            log("  cold start " + ", ".join(f"{k}={v:.3f}" for k, v in runs[-1].items()))
        result["median"] = {k: round(median([r[k] for r in runs]), 3) for k in keys}
        result["runs"] = runs
        _, stderr = _spawn(env, python_flags=("-X", "importtime"))
        result["importtime"] = importtime_breakdown(stderr)
        result["importtime"]["note"] = "python -X importtime, top-level packages, cumulative (inflated by tracing)"
    return result
