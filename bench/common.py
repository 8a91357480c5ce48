"""Shared pieces of the benchmarks: photos, statistics, fake AWS credentials, small servers."""

from __future__ import annotations

import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before onnxruntime or boto3 is imported anywhere: no telemetry, never real AWS.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
os.environ.update(FAKE_AWS)
os.environ.pop("AWS_PROFILE", None)

from twopass.local.stack import free_port, wait_http  # noqa: E402  (after the environment above)

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
EVENTS = REPO / "tests" / "events"
#: Real photos: the test photos and the bundled cat (the one the API events carry).
PHOTO_PATHS = (*sorted((REPO / "tests" / "data").glob("*.jpg")), REPO / "layers/twopass/twopass/data/cat.jpg")


def photos() -> list[bytes]:
    return [p.read_bytes() for p in PHOTO_PATHS]


def cat_jpeg() -> bytes:
    return PHOTO_PATHS[-1].read_bytes()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- statistics ----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0…100) of a non-empty sample."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "n": len(ms),
    }


def median_of_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """Per-key median over repeated runs, plus the raw runs for the record."""
    keys = [k for k in runs[0] if isinstance(runs[0][k], int | float)]
    out: dict[str, Any] = {k: round(median([r[k] for r in runs]), 3) for k in keys}
    out["runs"] = [dict(r) for r in runs]
    return out


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else float("nan")


@dataclass
class Target:
    name: str
    goal: str
    value: float
    threshold: float
    higher_is_better: bool = True
    note: str = ""

    @property
    def met(self) -> bool:
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "value": round(self.value, 3),
            "threshold": round(self.threshold, 3),
            "met": self.met,
            "note": self.note,
        }


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- processes -----------------------------------------------------------------------------------


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAKE_AWS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "layers" / "twopass"), str(REPO)]))
    env.pop("AWS_ENDPOINT_URL", None)
    env.update(extra or {})
    return env


def deployed_bytecode(env: dict[str, str], root: Path = REPO) -> dict[str, str]:
    """``env`` with bytecode as a deployed layer has it: compiled once, read by every later start.

    The environment may forbid writing bytecode (``make`` does), and then every module whose source
    changed since its ``.pyc`` was written, or a checkout that never had one, is compiled again at
    each start: a cold start would be measured with compiling that Lambda never does (the layer
    ships compiled). A cache of the bench's own per checkout keeps it out of the tree; the first
    (unmeasured) start fills it.
    """
    out = dict(env)
    out.pop("PYTHONDONTWRITEBYTECODE", None)
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    out["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "twopass-bench-pycache" / tag)
    return out


@contextlib.contextmanager
def server(
    args: Sequence[str],
    health_url: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
    cwd: Path = REPO,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child server process, up once ``health_url`` answers, stopped (SIGTERM, then kill) after."""
    # The server's output, kept only to show when it fails to start: a temp file, never in bench/results.
    log_path = Path(tempfile.gettempdir()) / f"twopass-bench-server.{os.getpid()}.{free_port()}.log"
    out = log_path.open("wb")
    proc = subprocess.Popen(list(args), env=dict(env or child_env()), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        try:
            wait_http(health_url, timeout, proc)
        except (RuntimeError, TimeoutError) as exc:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{exc}\n--- server log ---\n{tail}") from exc
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()
        with contextlib.suppress(OSError):
            log_path.unlink()


def quiet_twopass_logs() -> None:
    """twopass logs in this process go where Lambda's go (formatted JSON to a stream), not to the console."""
    import logging

    log = logging.getLogger("twopass")
    if getattr(log, "_twopass_configured", False):
        return
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    try:
        from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

        handler.setFormatter(LambdaPowertoolsFormatter(service="twopass-bench"))
    except ImportError:
        pass
    log.addHandler(handler)
    log.propagate = False
    log._twopass_configured = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def moto_server_process() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A moto server (the local stack's emulator) on a free port; yields its URL and process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server(
        [sys.executable, "-m", "twopass.local.emulator", "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/"
    ) as proc:
        yield url, proc


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    with moto_server_process() as (url, _):
        yield url


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of another process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def provision_moto(endpoint: str) -> dict[str, str]:
    """Create the template's queues and table in the emulator; returns the API function's env."""
    import boto3

    from twopass.local.provision import provision

    def client(service: str) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1")

    return dict(provision(client).api_env)


@contextlib.contextmanager
def patched_env(changes: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables in this process for the duration; boto3 clients follow them."""
    from twopass.aws import reset_clients

    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    reset_clients()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_clients()


def pointed_at(endpoint: str, env: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
    """Set ``AWS_ENDPOINT_URL`` and the template env in this process for the duration."""
    return patched_env({"AWS_ENDPOINT_URL": endpoint, **env})


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("onnxruntime", "numpy", "pillow", "fastapi", "uvicorn", "mangum", "moto", "boto3", "bentoml", "gibbs"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def machine() -> dict[str, Any]:
    import platform

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
