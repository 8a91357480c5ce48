"""Fast-path overhead at concurrency 1, everything measured together, interleaved in blocks:

* raw decode + preprocess + infer (a plain onnxruntime session, the card's preprocessing);
* the Lambda handler (Mangum, REST event) over in-memory backends;
  each of these two in a process of its own, as a Lambda execution environment has it
  (``bench/path_child.py``: two sessions in one process would share each other's thread pools);
* twopass over HTTP (uvicorn, in-memory backends) and a bare FastAPI endpoint running the same model
  inline (``bench/peers/bare_fastapi.py``), same session threads, same JSON request.

Targets: HTTP p50 ≤ 1.3 × bare FastAPI; handler p50 ≤ 1.2 × raw.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench import http_load
from bench.common import cat_jpeg, child_env, free_port, latency_summary, log, median, server
from bench.fast_path import HTTP_API_ENV, ChildPath, HttpClient, Timed, interleaved, twopass_http


@dataclass(frozen=True)
class OverheadConfig:
    requests: int = 150
    repeats: int = 3
    api_env: dict[str, str] = field(default_factory=lambda: dict(HTTP_API_ENV))


#: Calls of one path in a row before the next path's turn.
BLOCK = 10


def block_ratios(numerator: list[float], denominator: list[float], block: int = BLOCK) -> list[float]:
    """Median of each block of ``numerator`` over the median of the same block of ``denominator``."""
    return [
        median(numerator[i : i + block]) / median(denominator[i : i + block])
        for i in range(0, min(len(numerator), len(denominator)), block)
    ]


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
    data = cat_jpeg()
    raw, handler = ChildPath("raw"), ChildPath("handler")
    intra_op = config.api_env.get("TWOPASS_INTRA_OP_THREADS", "0")
    with twopass_http(config.api_env) as twopass_url, bare_http(intra_op) as bare_url:
        body = http_load.json_request(twopass_url, "/predict", data).split(b"\r\n\r\n", 1)[1]
        clients = {
            "http_twopass": HttpClient(twopass_url, "/predict", body),
            "http_bare": HttpClient(bare_url, "/predict", body),
        }
        calls: dict[str, Timed] = {"raw": raw, "handler": handler, **clients}
        interleaved(calls, 10)  # warm every path
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        # Paired by block: each ratio compares two blocks run back to back, so the machine's drift
        # in speed (large on shared 2-core machines) cancels out; the figure is their median.
        ratios: dict[str, list[float]] = {"http_vs_bare": [], "handler_vs_raw": []}
        for _ in range(config.repeats):
            lat = interleaved(calls, config.requests, BLOCK)
            for name, values in lat.items():
                runs[name].append(latency_summary(values))
            ratios["http_vs_bare"] += block_ratios(lat["http_twopass"], lat["http_bare"])
            ratios["handler_vs_raw"] += block_ratios(lat["handler"], lat["raw"])
            p50 = {name: r[-1]["p50_ms"] for name, r in runs.items()}
            log("  overhead p50 ms " + ", ".join(f"{k} {v:.2f}" for k, v in p50.items()))
        for client in clients.values():
            client.close()
    raw.close()
    handler.close()
    return {
        "config": {**config.__dict__},
        "c1": {
            name: {m: round(median([r[m] for r in values]), 2) for m in ("p50_ms", "p99_ms", "mean_ms")}
            for name, values in runs.items()
        },
        "ratios": {name: round(median(values), 3) for name, values in ratios.items()},
        "ratio_basis": f"median over {len(ratios['handler_vs_raw'])} pairs of back-to-back blocks of {BLOCK} calls",
        "goals": {"http_vs_bare": 1.3, "handler_vs_raw": 1.2},
    }
