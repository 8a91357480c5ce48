"""The API Lambda's cold start imports what a prediction needs, and no more than it did.

Measured with ``python -X importtime`` on the Lambda entry point (``functions/api/app.py``) in fresh
interpreters, in ways that hold on a loaded two-core machine: which modules must not load, and how
many load in all and of twopass's own (exact counts: each may grow by at most 10 % over
``cold_imports_baseline.json``). Time is checked coarsely, against the rest of the import in the same
run (every module neither twopass's nor FastAPI's: numpy, onnxruntime, pydantic, the standard
library; all slow down together when other work shares the cores): twopass's own import time and
FastAPI's (which the cold start's deferred pydantic builds halve), the best of three runs each, may
not pass 1.5 x the baseline's typical figure (they vary by about a fifth between runs here;
re-importing every route, as before the route deferral, is 2-3 x, and FastAPI without the build
deferral 2 x). After a deliberate change, write the new figures there (``python -m
tests.unit.test_cold_imports`` prints them).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BASELINE = Path(__file__).with_name("cold_imports_baseline.json")
#: Allowed growth over the baseline before the test calls it a regression: module counts, import time.
TOLERANCE = 1.10
TIME_TOLERANCE = 1.5
#: Modules a prediction does not need, which the cold start must therefore not import: the other
#: routes (their response models and OpenAPI pieces), the JWT verifier's crypto (token modes only),
#: powertools' metrics (twopass writes EMF itself), and boto3 (created on the first use of the AWS
#: backends, which the bare import below never reaches).
NOT_ON_THE_FAST_PATH = (
    "twopass.api.oip.routes",
    "twopass.api.oip.codec",
    "twopass.api.routes.jobs",
    "twopass.api.routes.batches",
    "twopass.api.routes.uploads",
    "twopass.api.routes.meta",
    "twopass.api.routes.demo",
    "jwt",
    "cryptography",
    "aws_lambda_powertools.metrics",
    "boto3",
)
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)")


@dataclass(frozen=True)
class ImportRun:
    modules: list[str]
    #: Self import time (µs) summed over twopass's modules, FastAPI's, and every other module.
    twopass_us: int
    fastapi_us: int
    other_us: int

    @property
    def twopass_modules(self) -> int:
        return sum(1 for m in self.modules if m.split(".")[0] == "twopass")

    @property
    def twopass_ratio(self) -> float:
        return self.twopass_us / self.other_us

    @property
    def fastapi_ratio(self) -> float:
        return self.fastapi_us / self.other_us


def import_run() -> ImportRun:
    """Import the Lambda entry point (it builds the app) in a fresh interpreter under ``-X importtime``."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}  # no model load, no AWS
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "twopass"), str(REPO)])
    # Bytecode as a deployed layer has it (compiled once), kept out of the checkout: the first run
    # compiles into this cache, the measured runs read it.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "twopass-cold-imports-pycache")
    code = "import runpy; runpy.run_path('functions/api/app.py')"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules, by_top = [], {"twopass": 0, "fastapi": 0, "": 0}
    for line in proc.stderr.splitlines():
        if m := _LINE.match(line):
            name, self_us = m.group(4), int(m.group(1))
            modules.append(name)
            top = name.split(".")[0]
            by_top[top if top in by_top else ""] += self_us
    return ImportRun(modules, by_top["twopass"], by_top["fastapi"], by_top[""])


def measure(runs: int = 3) -> dict[str, float]:
    import_run()  # compiles what the cache lacks
    results = [import_run() for _ in range(runs)]
    return {
        "modules": len(results[0].modules),
        "twopass_modules": results[0].twopass_modules,
        "twopass_vs_other_import_time": round(min(r.twopass_ratio for r in results), 3),
        "fastapi_vs_other_import_time": round(min(r.fastapi_ratio for r in results), 3),
    }


def test_the_cold_start_imports_no_more_than_its_baseline() -> None:
    baseline = json.loads(BASELINE.read_text())
    import_run()  # compiles what the cache lacks
    run = import_run()
    loaded = set(run.modules)
    assert not [m for m in NOT_ON_THE_FAST_PATH if m in loaded], "imported though a prediction does not need it"
    assert len(run.modules) <= baseline["modules"] * TOLERANCE
    assert run.twopass_modules <= baseline["twopass_modules"] * TOLERANCE
    runs = [run, import_run(), import_run()]
    for who in ("twopass", "fastapi"):
        best = min(getattr(r, f"{who}_ratio") for r in runs)
        key = f"{who}_vs_other_import_time"
        assert best <= baseline[key] * TIME_TOLERANCE, (
            f"{who}'s imports now take {best:.3f} x the rest of the cold start's (baseline {baseline[key]})"
        )


def test_the_deferred_routes_are_the_same_app_once_loaded() -> None:
    """``defer_routes`` changes when the routes load, not which: same routes in the same order, same schema."""
    from fastapi.testclient import TestClient

    from twopass.api.app import create_app
    from twopass.config import Settings

    settings = Settings(auth_mode="jwt", jwt_issuer="https://issuer.example", jwt_audience="app")
    eager, deferred = create_app(settings=settings), create_app(settings=settings, defer_routes=True)
    assert set(deferred.openapi()["paths"]) == {"/predict", "/predict/test"}  # nothing else yet
    with TestClient(deferred) as client:
        assert client.get("/health").status_code == 200  # a path outside the fast path loads the rest
        assert client.get("/openapi.json").json() == eager.openapi()
        assert client.get("/jobs").status_code == eager_status(eager, "/jobs")

    def table(app: object) -> list[tuple[str, str]]:
        return [(type(r).__name__, repr(getattr(r, "path", None))) for r in app.routes]  # type: ignore[attr-defined]

    assert table(deferred) == table(eager)


def eager_status(app: object, path: str) -> int:
    from fastapi.testclient import TestClient

    with TestClient(app) as client:  # type: ignore[arg-type]
        return client.get(path).status_code


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))


@pytest.mark.parametrize(
    ("init_type", "eager"), [("on-demand", False), ("snap-start", True), ("provisioned-concurrency", True)]
)
def test_routes_load_at_init_where_init_is_off_the_request_clock(init_type: str, eager: bool) -> None:
    # SnapStart snapshots init and provisioned concurrency runs it ahead of traffic: there every route
    # loads at init; an on-demand cold start loads the fast path's routes only.
    env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}  # no model load, no AWS
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "twopass"), str(REPO)])
    env["AWS_LAMBDA_INITIALIZATION_TYPE"] = init_type
    code = (
        "import runpy, sys; app = runpy.run_path('functions/api/app.py')['app']; "
        "print(sorted(app.openapi()['paths']) == ['/predict', '/predict/test'], 'twopass.api.routes.jobs' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(not eager), str(eager)]
