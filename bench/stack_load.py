"""POST /predict through the local stack (``make run``: moto server, API, one worker running), now and
as an earlier commit had it, in the same run.

The earlier commit is checked out once into a git worktree under the system's temp directory and
started the way ``make run`` started it then (``python -m twopass.local``); the current code starts
the same way. Each round measures concurrency 1 (p50) and concurrency 10 (requests/s), the two
stacks taking turns so both see the same stretches of machine noise. The worker runs all along:
every accepted job goes through the slow model on the same cores.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import http_load
from bench.common import REPO, cat_jpeg, free_port, latency_summary, log, median, wait_http

#: The commit the issue's "before" figures were measured on (14 req/s at c=1, 18 at c=10).
BEFORE = "a226388"
API_KEY = "local-dev-key"


@dataclass(frozen=True)
class StackConfig:
    rounds: int = 2
    c1_requests: int = 40
    c10_requests: int = 150
    before: str = BEFORE
    #: A checkout to run as "before" instead of ``before``'s worktree (``--smoke``: this one, so no
    #: worktree is made and both stacks are the working tree's).
    before_root: Path | None = None


def request(url: str, image: bytes) -> bytes:
    body = json.dumps({"image_data": base64.b64encode(image).decode()}).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {urlsplit(url).netloc}\r\nContent-Type: application/json\r\n"
        f"x-api-key: {API_KEY}\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


def worktree(commit: str) -> Path:
    """A checkout of ``commit`` (made once, reused by later runs)."""
    path = Path(tempfile.gettempdir()) / f"twopass-bench-{commit}"
    if not (path / "layers").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


@contextlib.contextmanager
def make_run(root: Path) -> Iterator[str]:
    """``python -m twopass.local`` from ``root`` on free ports, as ``make run`` starts it; yields the API URL."""
    api, emulator = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(root / "layers" / "twopass"), "ORT_DISABLE_TELEMETRY": "1"}
    env.pop("AWS_ENDPOINT_URL", None)
    args = [sys.executable, "-m", "twopass.local", "--api-port", str(api), "--emulator-port", str(emulator)]
    with tempfile.TemporaryDirectory() as logs:
        args += ["--log-dir", logs]
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{api}"
        try:
            wait_http(f"{url}/health", 180, proc)
            _wait_worker(url)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_worker(url: str, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            req = urllib.request.Request(f"{url}/health/all", headers={"x-api-key": API_KEY})
            with urllib.request.urlopen(req, timeout=5) as resp:
                worker = json.loads(resp.read())["backends"]["worker"]
            if worker.get("alive", 0) >= 1:
                return
        time.sleep(0.5)
    raise TimeoutError("no worker alive")


def measure(url: str, config: StackConfig) -> dict[str, float]:
    raw = request(url, cat_jpeg())
    http_load.load(url, raw, concurrency=2, total=10)  # warm
    c1 = http_load.load(url, raw, concurrency=1, total=config.c1_requests)
    c10 = http_load.load(url, raw, concurrency=10, total=config.c10_requests)
    if c1.errors or c10.errors:
        raise RuntimeError(f"errors: c1 {c1.statuses}, c10 {c10.statuses}")
    return {
        "c1_p50_ms": latency_summary(c1.latencies)["p50_ms"],
        "c1_rps": round(c1.throughput, 2),
        "c10_rps": round(c10.throughput, 2),
        "c10_p50_ms": latency_summary(c10.latencies)["p50_ms"],
    }


def run(config: StackConfig) -> dict[str, Any]:
    old = config.before_root or worktree(config.before)
    before = config.before if config.before_root is None else str(config.before_root)
    runs: dict[str, list[dict[str, float]]] = {"before": [], "now": []}
    for i in range(config.rounds):
        for name, root in (("before", old), ("now", REPO)):
            log(f"stack: round {i + 1}, {name} ({before if name == 'before' else 'working tree'})")
            with make_run(root) as url:
                runs[name].append(measure(url, config))
            log(f"  {runs[name][-1]}")
    out: dict[str, Any] = {"before_commit": before, "runs": runs}
    for name, values in runs.items():
        out[name] = {k: round(median([v[k] for v in values]), 2) for k in values[0]}
    out["c10_throughput_ratio"] = round(out["now"]["c10_rps"] / out["before"]["c10_rps"], 3)
    out["c1_p50_ratio"] = round(out["now"]["c1_p50_ms"] / out["before"]["c1_p50_ms"], 3)
    return out


if __name__ == "__main__":
    from bench.common import quiet_twopass_logs

    quiet_twopass_logs()
    print(json.dumps(run(StackConfig(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 1)), indent=1))
