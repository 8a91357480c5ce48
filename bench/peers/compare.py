"""Peers on the same model, machine and run: BentoML and gibbs against twopass over HTTP."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import http_load
from bench.common import REPO, cat_jpeg, child_env, free_port, log, median, ratio, server
from bench.fast_path import HTTP_API_ENV, median_summary, summary, twopass_http

BENTO_VENV = REPO / ".venv-bench-bento"
#: BentoML and the runtime pins of the API Lambda (functions/api/requirements.txt).
BENTO_REQUIREMENTS = ("bentoml==1.4.39", "onnxruntime==1.31.1", "numpy==2.5.5", "pillow==13.0.0")
GIBBS = "gibbs==0.2.0"


@dataclass(frozen=True)
class PeersConfig:
    requests: int = 200
    concurrency: tuple[int, ...] = (1, 10)
    repeats: int = 3
    bursts: int = 5
    #: Threads (BentoML) / worker processes (gibbs) / inference pool (twopass): the same for all.
    parallelism: int = 2
    install: bool = True
    api_env: dict[str, str] = field(default_factory=dict)


def ensure_bento(install: bool) -> Path | None:
    """``.venv-bench-bento/bin/bentoml``, creating the venv once (BentoML's deps stay out of ours)."""
    exe = BENTO_VENV / "bin" / "bentoml"
    if exe.exists():
        return exe
    if not install:
        return None
    log(f"peers: creating {BENTO_VENV.name} with {', '.join(BENTO_REQUIREMENTS)} (once, ~1-2 min)")
    subprocess.run([sys.executable, "-m", "venv", str(BENTO_VENV)], check=True)
    subprocess.run([str(BENTO_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *BENTO_REQUIREMENTS], check=True)
    return exe


def ensure_gibbs(install: bool) -> str | None:
    """``None`` when gibbs imports; otherwise why it cannot be used."""
    try:
        import gibbs  # noqa: F401
        import zmq  # noqa: F401

        return None
    except ImportError:
        if not install:
            return "gibbs is not installed (bench/run.py installs it, unless --no-install or --smoke)"
    log(f"peers: installing {GIBBS} --no-deps (its pin pyzmq<24 has no Python 3.12 build)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", GIBBS, "msgpack~=1.0", "loguru~=0.7", "pyzmq"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        return f"pip install {GIBBS} failed: {proc.stderr[-500:]}"
    return None


@contextlib.contextmanager
def bento_http(exe: Path, parallelism: int, intra_op: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [str(exe), "serve", "bench.peers.bento_service:FastModel", "--host", "127.0.0.1", "--port", str(port)]
    env = child_env(
        {"BENCH_PEER_THREADS": str(parallelism), "BENCH_PEER_INTRA_OP": intra_op, "BENTOML_DO_NOT_TRACK": "True"}
    )
    with server(args, f"{url}/readyz", env=env, timeout=180):
        yield url


@contextlib.contextmanager
def gibbs_http(parallelism: int, intra_op: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.peers.gibbs_server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = child_env(
        {"BENCH_PEER_THREADS": str(parallelism), "BENCH_PEER_INTRA_OP": intra_op, "BENCH_GIBBS_PORT": str(free_port())}
    )
    with server(args, f"{url}/health", env=env, timeout=120):
        yield url


def run(config: PeersConfig) -> dict[str, Any]:
    result: dict[str, Any] = {
        "config": {**config.__dict__, "concurrency": list(config.concurrency)},
        "payload": 'POST /predict {"image_data": base64(cat.jpg)} to every server, same client',
    }
    servers: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        api_env = {**HTTP_API_ENV, "TWOPASS_INFERENCE_CONCURRENCY": str(config.parallelism), **config.api_env}
        intra_op = api_env["TWOPASS_INTRA_OP_THREADS"]  # peers get the same session threads
        result["session"] = {"intra_op_threads": intra_op, "parallelism": config.parallelism}
        servers["twopass"] = stack.enter_context(twopass_http(api_env))
        exe = None
        try:
            exe = ensure_bento(config.install)
        except (OSError, subprocess.CalledProcessError) as exc:
            result["bentoml_error"] = f"could not create {BENTO_VENV.name}: {exc}"
        if exe is None:
            hint = "bench/run.py creates it, unless --no-install or --smoke"
            result.setdefault("bentoml_error", f"{BENTO_VENV.name} missing ({hint})")
        else:
            try:
                servers["bentoml"] = stack.enter_context(bento_http(exe, config.parallelism, intra_op))
            except (RuntimeError, TimeoutError) as exc:
                result["bentoml_error"] = str(exc)[-1500:]
        why = ensure_gibbs(config.install)
        if why is None:
            try:
                servers["gibbs"] = stack.enter_context(gibbs_http(config.parallelism, intra_op))
            except (RuntimeError, TimeoutError) as exc:
                why = str(exc)[-1500:]
        if why:
            result["gibbs_error"] = why
        for key in ("bentoml_error", "gibbs_error"):
            if key in result:
                log(f"peers: {key}: {result[key]}")

        requests = {name: http_load.json_request(url, "/predict", cat_jpeg()) for name, url in servers.items()}
        for name, url in servers.items():
            http_load.load(url, requests[name], concurrency=2, total=10)  # warm
        runs: dict[str, dict[str, list[dict[str, float]]]] = {n: {} for n in servers}
        bursts: dict[str, list[float]] = {n: [] for n in servers}
        errors: dict[str, int] = dict.fromkeys(servers, 0)
        # Interleaved rounds: each server gets the same share of the machine's noisy moments.
        for _ in range(config.repeats):
            for c in config.concurrency:
                for name, url in servers.items():
                    total = max(config.requests, 3 * c) if c > 1 else config.requests // 2
                    res = http_load.load(url, requests[name], concurrency=c, total=total)
                    if res.errors:  # reported, not hidden: latencies and throughput count answered requests
                        log(f"  {name}: {res.errors} failed requests at concurrency {c}: {res.statuses}")
                        errors[name] += res.errors
                    runs[name].setdefault(f"c{c}", []).append(summary(res.latencies, res.wall))
            for _ in range(max(1, config.bursts // config.repeats)):
                for name, url in servers.items():
                    try:
                        bursts[name].append(http_load.burst(url, requests[name], 10))
                    except RuntimeError as exc:
                        log(f"  {name}: burst failed: {exc}")
                        errors[name] += 1
        for name in servers:
            result[name] = {c: median_summary(r) for c, r in runs[name].items()}
            result[name]["burst10_wall_ms"] = round(median(bursts[name]) * 1000, 1) if bursts[name] else None
            result[name]["failed_requests"] = errors[name]
            log(f"  {name}: {result[name]}")

    ratios: dict[str, float] = {}
    for peer in ("bentoml", "gibbs"):
        if peer not in result:
            continue
        for c in config.concurrency:
            tp, pp = result["twopass"][f"c{c}"], result[peer][f"c{c}"]
            ratios[f"p50_c{c}_twopass_vs_{peer}"] = ratio(tp["p50_ms"], pp["p50_ms"])
            ratios[f"throughput_c{c}_twopass_vs_{peer}"] = ratio(tp["throughput_rps"], pp["throughput_rps"])
        ratios[f"burst10_twopass_vs_{peer}"] = ratio(
            result["twopass"]["burst10_wall_ms"], result[peer]["burst10_wall_ms"]
        )
    result["ratios"] = ratios
    return result
