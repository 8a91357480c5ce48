"""Fast-path overhead at concurrency 1, everything measured together, interleaved in blocks:

* raw decode + preprocess + infer (a plain onnxruntime session, the card's preprocessing);
* the Lambda handler (Mangum, REST event) over in-memory backends;
* twopass over HTTP (uvicorn, in-memory backends) and a bare FastAPI endpoint running the same model
  inline (``bench/peers/bare_fastapi.py``), same session threads, same JSON request.

Targets: HTTP p50 ≤ 1.3 × bare FastAPI; handler p50 ≤ 1.2 × raw.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench import http_load
from bench.common import cat_jpeg, child_env, free_port, latency_summary, log, median, server
from bench.fast_path import (
    HTTP_API_ENV,
    HttpClient,
    RawFastPath,
    api_settings,
    check_ok,
    interleaved,
    memory_handler,
    predict_event,
    twopass_http,
)


@dataclass(frozen=True)
class OverheadConfig:
    requests: int = 150
    repeats: int = 3
    api_env: dict[str, str] = field(default_factory=lambda: dict(HTTP_API_ENV))


@contextlib.contextmanager
def bare_http(intra_op: str) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.peers.bare_fastapi:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    with server(args, f"{url}/health", env=child_env({"BENCH_PEER_INTRA_OP": intra_op}), timeout=120):
        yield url


def run(config: OverheadConfig) -> dict[str, Any]:
    settings = api_settings({})
    data = cat_jpeg()
    raw = RawFastPath(settings.fast_model)
    handler = memory_handler(settings)
    event = predict_event()
    intra_op = config.api_env.get("TWOPASS_INTRA_OP_THREADS", "0")
    with twopass_http(config.api_env) as twopass_url, bare_http(intra_op) as bare_url:
        body = http_load.json_request(twopass_url, "/predict", data).split(b"\r\n\r\n", 1)[1]
        clients = {
            "http_twopass": HttpClient(twopass_url, "/predict", body),
            "http_bare": HttpClient(bare_url, "/predict", body),
        }
        calls: dict[str, Callable[[], object]] = {
            "raw": lambda: raw(data),
            "handler": lambda: check_ok(handler(event)),
            **clients,
        }
        interleaved(calls, 10)  # warm every path
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        ratios: dict[str, list[float]] = {"http_vs_bare": [], "handler_vs_raw": []}
        for _ in range(config.repeats):
            lat = interleaved(calls, config.requests)
            for name, values in lat.items():
                runs[name].append(latency_summary(values))
            p50 = {name: r[-1]["p50_ms"] for name, r in runs.items()}
            ratios["http_vs_bare"].append(p50["http_twopass"] / p50["http_bare"])
            ratios["handler_vs_raw"].append(p50["handler"] / p50["raw"])
            log("  overhead p50 ms " + ", ".join(f"{k} {v:.2f}" for k, v in p50.items()))
        for client in clients.values():
            client.close()
    return {
        "config": {**config.__dict__},
        "c1": {
            name: {m: round(median([r[m] for r in values]), 2) for m in ("p50_ms", "p99_ms", "mean_ms")}
            for name, values in runs.items()
        },
        "ratios": {name: round(median(values), 3) for name, values in ratios.items()},
        "goals": {"http_vs_bare": 1.3, "handler_vs_raw": 1.2},
    }
