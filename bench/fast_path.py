"""Fast path: raw decode+preprocess+infer vs the Lambda handler in-process vs HTTP (uvicorn)."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import http_load
from bench.common import EVENTS, REPO, cat_jpeg, child_env, free_port, latency_summary, log, median, ratio, server
from twopass.config import Settings
from twopass.imaging import load_tensor
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels

MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class FastConfig:
    requests: int = 200
    handler_requests: int = 100
    concurrency: tuple[int, ...] = (1, 10, 50)
    repeats: int = 3
    bursts: int = 5
    #: TWOPASS_* overrides for the API under test (empty: the project's defaults).
    api_env: dict[str, str] = field(default_factory=dict)


@dataclass
class LambdaContext:
    function_name: str = "twopass-ApiFunction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:twopass-ApiFunction"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = "8f6f3b5c-0000-4000-8000-000000000001"
    log_group_name: str = "/aws/lambda/twopass-ApiFunction"
    log_stream_name: str = "2026/11/22/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 15000


def predict_event() -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "rest_predict_binary.json").read_text())
    return event


class RawFastPath:
    """The fast model with nothing around it: a plain onnxruntime session, the card's preprocessing."""

    def __init__(self, model: str) -> None:
        path = Path(model)
        self.card = ModelCard.load(card_path(path))
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.labels = imagenet_labels()
        self.session.run(None, {self.card.input_name: self.tensor(cat_jpeg())[None]})

    def tensor(self, data: bytes) -> np.ndarray:
        return load_tensor(data, self.card.preprocessing, max_pixels=MAX_PIXELS)

    def __call__(self, data: bytes) -> tuple[str, float]:
        (logits,) = self.session.run(None, {self.card.input_name: self.tensor(data)[None]})
        probs = np.exp(logits[0] - logits[0].max())
        probs /= probs.sum()
        best = int(np.argmax(probs))
        return self.labels[best], float(probs[best])


def closed_loop(call: Callable[[], object], concurrency: int, total: int) -> tuple[list[float], float]:
    """``total`` calls, ``concurrency`` threads at a time; per-call seconds and wall seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [total]

    def worker() -> None:
        while True:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            call()
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return latencies, time.perf_counter() - t0


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    return {**latency_summary(latencies), "throughput_rps": round(len(latencies) / wall, 2)}


@contextlib.contextmanager
def moto_handler() -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """``functions/api/app.py`` imported fresh inside moto's in-process mock, resources provisioned."""
    import boto3
    from moto import mock_aws
    from twopass.aws import reset_clients
    from twopass.local.provision import provision

    os.environ.pop("AWS_ENDPOINT_URL", None)
    reset_clients()
    with mock_aws():
        env = provision(lambda service: boto3.client(service, region_name="us-east-1")).api_env
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            spec = importlib.util.spec_from_file_location("bench_api_handler", REPO / "functions/api/app.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            yield lambda event: module.handler(event, LambdaContext())
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            reset_clients()


def memory_handler(settings: Settings) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The same app and Mangum adapter over MemoryJobStore + MemoryQueue: framework cost alone."""
    from mangum import Mangum
    from twopass.api.app import create_app
    from twopass.api.service import TwopassService
    from twopass.jobs.memory import MemoryJobStore
    from twopass.queue.memory import MemoryQueue

    service = TwopassService(settings, MemoryJobStore(), MemoryQueue())
    _ = service.classifier
    handler = Mangum(create_app(service), lifespan="off")
    return lambda event: handler(event, LambdaContext())  # type: ignore[arg-type]


def check_ok(response: dict[str, Any]) -> None:
    if response.get("statusCode") != 200:
        raise RuntimeError(f"handler answered {response.get('statusCode')}: {response.get('body')}")


def time_handler(handler: Callable[[dict[str, Any]], dict[str, Any]], n: int) -> list[float]:
    event = predict_event()
    for _ in range(3):
        check_ok(handler(event))
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        response = handler(event)
        out.append(time.perf_counter() - t0)
        check_ok(response)
    return out


def api_settings(api_env: dict[str, str]) -> Settings:
    return Settings.from_env({"TWOPASS_PROVIDERS": "cpu", **api_env})


@contextlib.contextmanager
def twopass_http(api_env: dict[str, str]) -> Iterator[str]:
    """uvicorn serving the real twopass app (in-memory store and queue); yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        sys.executable, "-m", "uvicorn", "--factory", "bench.http_app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = child_env({"TWOPASS_PROVIDERS": "cpu", "TWOPASS_LOG_LEVEL": "WARNING", **api_env})
    with server(args, f"{url}/health", env=env):
        yield url


def http_measure(url: str, path: str, config: FastConfig, field_name: str = "image_data") -> dict[str, Any]:
    """p50/p99/throughput at each concurrency and the 10-request burst, median over repeats."""
    request = http_load.json_request(url, path, cat_jpeg(), field_name)
    http_load.load(url, request, concurrency=2, total=10)  # warm
    out: dict[str, Any] = {}
    for c in config.concurrency:
        runs = []
        for _ in range(config.repeats):
            total = max(config.requests, 3 * c) if c > 1 else config.requests // 2
            res = http_load.load(url, request, concurrency=c, total=total)
            if res.errors:
                raise RuntimeError(f"{res.errors} errors at concurrency {c}: {res.statuses}")
            runs.append(summary(res.latencies, res.wall))
        out[f"c{c}"] = _median_summary(runs)
    walls = [http_load.burst(url, request, 10) for _ in range(config.bursts)]
    out["burst10_wall_ms"] = round(median(walls) * 1000, 1)
    out["burst10_runs_ms"] = [round(w * 1000, 1) for w in walls]
    return out


def _median_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = ("p50_ms", "p99_ms", "mean_ms", "throughput_rps")
    return {**{k: round(median([r[k] for r in runs]), 2) for k in keys}, "n": int(sum(r["n"] for r in runs))}


def raw_measure(raw: RawFastPath, config: FastConfig) -> dict[str, Any]:
    data = cat_jpeg()
    out: dict[str, Any] = {}
    for c in (*config.concurrency, 2):
        runs = []
        for _ in range(config.repeats):
            total = max(config.requests, 3 * c) if c > 1 else config.requests // 2
            lat, wall = closed_loop(lambda: raw(data), c, total)
            runs.append(summary(lat, wall))
        out[f"c{c}"] = _median_summary(runs)

    def burst() -> float:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda _: raw(data), range(10)))
        return time.perf_counter() - t0

    walls = [burst() for _ in range(config.bursts)]
    out["burst10_wall_ms"] = round(median(walls) * 1000, 1)
    out["best_throughput_rps"] = max(v["throughput_rps"] for k, v in out.items() if k.startswith("c"))
    return out


def run(config: FastConfig) -> dict[str, Any]:
    settings = api_settings(config.api_env)
    result: dict[str, Any] = {
        "config": {**config.__dict__, "concurrency": list(config.concurrency)},
        "api_settings": {
            "intra_op_threads": settings.intra_op_threads,
            "inference_concurrency": settings.inference_concurrency,
        },
        "payload": "cat.jpg (451x300 JPEG, 35 KB): binary in the API Gateway event, base64 JSON over HTTP",
    }
    log("fast path: raw decode+preprocess+infer")
    raw = RawFastPath(settings.fast_model)
    result["raw"] = raw_measure(raw, config)
    log(f"  raw {result['raw']}")

    log("fast path: Lambda handler in-process (Mangum, API Gateway REST event)")
    handler_runs: dict[str, list[dict[str, float]]] = {"moto": [], "memory": [], "raw_same_run": []}
    mem = memory_handler(settings)
    with moto_handler() as moto:
        for _ in range(config.repeats):
            handler_runs["raw_same_run"].append(
                latency_summary(closed_loop(lambda: raw(cat_jpeg()), 1, config.handler_requests)[0])
            )
            handler_runs["moto"].append(latency_summary(time_handler(moto, config.handler_requests)))
            handler_runs["memory"].append(latency_summary(time_handler(mem, config.handler_requests)))
            log(f"  handler raw/moto/memory p50: {[handler_runs[k][-1]['p50_ms'] for k in handler_runs]}")
    result["handler"] = {
        k: {m: round(median([r[m] for r in v]), 2) for m in ("p50_ms", "p99_ms", "mean_ms")}
        for k, v in handler_runs.items()
    }
    result["handler"]["note"] = (
        "moto: DynamoDB put + SQS send answered by moto's in-process mock; memory: MemoryJobStore + MemoryQueue"
    )

    log("fast path: HTTP (uvicorn, twopass app over MemoryJobStore + MemoryQueue)")
    with twopass_http(config.api_env) as url:
        result["http"] = http_measure(url, "/predict", config)
    log(f"  http {result['http']}")

    h, r = result["handler"], result["raw"]
    result["ratios"] = {
        "handler_moto_p50_vs_raw": ratio(h["moto"]["p50_ms"], h["raw_same_run"]["p50_ms"]),
        "handler_memory_p50_vs_raw": ratio(h["memory"]["p50_ms"], h["raw_same_run"]["p50_ms"]),
        "http_c1_p50_vs_raw": ratio(result["http"]["c1"]["p50_ms"], r["c1"]["p50_ms"]),
        "http_c10_throughput_vs_raw_best": ratio(result["http"]["c10"]["throughput_rps"], r["best_throughput_rps"]),
        "http_c10_throughput_vs_raw_c10": ratio(result["http"]["c10"]["throughput_rps"], r["c10"]["throughput_rps"]),
        "http_burst10_vs_raw_burst10": ratio(result["http"]["burst10_wall_ms"], r["burst10_wall_ms"]),
    }
    return result


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
