"""Fast path: raw decode+preprocess+infer vs the Lambda handler in-process vs HTTP (uvicorn)."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import onnxruntime as ort

from bench import http_load
from bench.cold_child import Context as LambdaContext
from bench.common import (
    EVENTS,
    REPO,
    cat_jpeg,
    child_env,
    free_port,
    latency_summary,
    log,
    median,
    patched_env,
    ratio,
    server,
)
from twopass.config import Settings
from twopass.imaging import load_tensor
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels

MAX_PIXELS = 40_000_000
#: uvicorn: one core per session; the inference concurrency is the project's default rule (cores + 1).
HTTP_API_ENV = {"TWOPASS_INTRA_OP_THREADS": "1"}


@dataclass(frozen=True)
class FastConfig:
    requests: int = 200
    handler_requests: int = 100
    concurrency: tuple[int, ...] = (1, 10, 50)
    repeats: int = 3
    bursts: int = 5
    #: TWOPASS_* settings of the HTTP API under test (uvicorn serves many requests at once).
    api_env: dict[str, str] = field(default_factory=lambda: dict(HTTP_API_ENV))


def predict_event() -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / "rest_predict_binary.json").read_text())
    return event


class RawFastPath:
    """The fast model with nothing around it: a plain onnxruntime session, the card's preprocessing."""

    def __init__(self, model: str, intra_op_threads: int = 0) -> None:
        path = Path(model)
        self.card = ModelCard.load(card_path(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
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
        env = dict(provision(lambda service: boto3.client(service, region_name="us-east-1")).api_env)
        env["POWERTOOLS_TRACE_DISABLED"] = "true"  # no X-Ray daemon here
        with patched_env(env):
            spec = importlib.util.spec_from_file_location("bench_api_handler", REPO / "functions/api/app.py")
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            yield lambda event: module.handler(event, LambdaContext())


def memory_handler(settings: Settings) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The same app and Mangum adapter over MemoryJobStore + MemoryQueue: framework cost alone."""
    from mangum import Mangum

    from twopass.api.app import create_app
    from twopass.api.services.service import TwopassService
    from twopass.jobs.memory import MemoryJobStore
    from twopass.queue.memory import MemoryQueue

    service = TwopassService(settings, MemoryJobStore(), MemoryQueue())
    _ = service.classifier
    handler = Mangum(create_app(service), lifespan="off")
    return lambda event: handler(event, LambdaContext())  # type: ignore[arg-type]


def check_ok(response: dict[str, Any]) -> None:
    if response.get("statusCode") != 200:
        raise RuntimeError(f"handler answered {response.get('statusCode')}: {response.get('body')}")


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
    env = child_env({"TWOPASS_PROVIDERS": "cpu", **api_env})
    with server(args, f"{url}/health", env=env):
        yield url


def median_summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Each latency figure's median over repeated runs of one load, and the requests they made in all."""
    keys = ("p50_ms", "p99_ms", "mean_ms", "throughput_rps")
    return {**{k: round(median([r[k] for r in runs]), 2) for k in keys}, "n": int(sum(r["n"] for r in runs))}


class HttpClient:
    """One keep-alive connection; a sync POST per call (for the interleaved concurrency-1 loop)."""

    def __init__(self, url: str, path: str, body: bytes) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=60)
        self.path, self.body = path, body
        self.headers = {"Content-Type": "application/json"}

    def __call__(self) -> None:
        self.conn.request("POST", self.path, body=self.body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")

    def close(self) -> None:
        self.conn.close()


class ChildPath:
    """A path in a process of its own (``bench/path_child.py``), timed there block by block."""

    def __init__(self, kind: str) -> None:
        args = [sys.executable, "-m", "bench.path_child", kind]
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=child_env(), cwd=REPO, text=True,
        )  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        if self._out.readline().strip() != "ready":
            raise RuntimeError(f"bench.path_child {kind} did not start (exit {self.proc.poll()})")

    def block(self, n: int) -> list[float]:
        self._in.write(f"{n}\n")
        self._in.flush()
        line = self._out.readline()
        if not line:
            raise RuntimeError(f"bench.path_child exited ({self.proc.poll()})")
        durations: list[float] = json.loads(line)
        return durations

    def close(self) -> None:
        self._in.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


#: A path to time: a call made here, or a path in a process of its own.
Timed = Callable[[], object] | ChildPath


def interleaved(calls: dict[str, Timed], n: int, block: int = 10) -> dict[str, list[float]]:
    """``n`` calls of each path in blocks of ``block``, the paths taking turns block by block.

    Every path sees the same stretches of machine noise, while within a block it runs warm, as a
    Lambda instance or server does between requests a few milliseconds apart. A :class:`ChildPath`
    times its block in its own process.
    """
    out: dict[str, list[float]] = {name: [] for name in calls}
    for start in range(0, n, block):
        size = min(block, n - start)
        for name, call in calls.items():
            if isinstance(call, ChildPath):
                out[name] += call.block(size)
                continue
            for _ in range(size):
                t0 = time.perf_counter()
                call()
                out[name].append(time.perf_counter() - t0)
    return out


def pair_loop(pair: list[RawFastPath], data: bytes, total: int) -> tuple[list[float], float]:
    """Two threads, each with its own single-threaded session, ``total`` calls between them."""
    latencies: list[list[float]] = [[], []]

    def go(i: int) -> None:
        for _ in range(total // 2):
            t0 = time.perf_counter()
            pair[i](data)
            latencies[i].append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(go, range(2)))
    return latencies[0] + latencies[1], time.perf_counter() - t0


def raw_burst(raw: RawFastPath, data: bytes) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(10) as pool:
        list(pool.map(lambda _: raw(data), range(10)))
    return time.perf_counter() - t0


def run(config: FastConfig) -> dict[str, Any]:
    settings = api_settings({})  # the handler runs as in Lambda: the project's defaults
    http_settings = api_settings(config.api_env)
    result: dict[str, Any] = {
        "config": {**config.__dict__, "concurrency": list(config.concurrency)},
        "api_settings": {
            "handler (Lambda: one request per instance)": {
                "intra_op_threads": settings.intra_op_threads,
                "inference_concurrency": settings.inference_threads,
            },
            "http (uvicorn)": {
                "intra_op_threads": http_settings.intra_op_threads,
                "inference_concurrency": http_settings.inference_threads,
            },
        },
        "payload": "cat.jpg (451x300 JPEG, 35 KB): binary in the API Gateway REST event, base64 JSON over HTTP",
        "http_backend": "uvicorn + create_app(TwopassService(settings, MemoryJobStore(), MemoryQueue()))",
    }
    data = cat_jpeg()
    raw = RawFastPath(settings.fast_model)
    # The best raw throughput on 2 cores: one single-threaded session per core, one thread each.
    raw_pair = [RawFastPath(settings.fast_model, intra_op_threads=1) for _ in range(2)]
    event = predict_event()
    mem = memory_handler(settings)
    with moto_handler() as moto, twopass_http(config.api_env) as url:
        request = http_load.json_request(url, "/predict", data)
        client = HttpClient(url, "/predict", request.split(b"\r\n\r\n", 1)[1])
        calls: dict[str, Callable[[], object]] = {
            "raw": lambda: raw(data),
            "handler_moto": lambda: check_ok(moto(event)),
            "handler_memory": lambda: check_ok(mem(event)),
            "http": client,
        }
        interleaved(calls, 5)  # warm every path
        log("fast path: concurrency 1 — raw, handler (moto), handler (in-memory), HTTP — interleaved in blocks")
        c1_runs: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        ratio_runs: dict[str, list[float]] = {"handler_moto": [], "handler_memory": [], "http": []}
        for _ in range(config.repeats):
            lat = interleaved(calls, config.handler_requests)
            for name, values in lat.items():
                c1_runs[name].append(latency_summary(values))
            for name in ratio_runs:
                ratio_runs[name].append(c1_runs[name][-1]["p50_ms"] / c1_runs["raw"][-1]["p50_ms"])
            log("  p50 ms " + ", ".join(f"{k} {v[-1]['p50_ms']:.1f}" for k, v in c1_runs.items()))
        client.close()
        result["c1"] = {
            name: {m: round(median([r[m] for r in runs]), 2) for m in ("p50_ms", "p99_ms", "mean_ms")}
            for name, runs in c1_runs.items()
        }
        result["c1"]["note"] = (
            "handler_moto: DynamoDB put + SQS send served by moto's in-process mock; "
            "handler_memory: MemoryJobStore + MemoryQueue; http: uvicorn over in-memory backends"
        )

        log("fast path: concurrency " + ", ".join(map(str, config.concurrency)) + " — raw threads vs HTTP")
        raw_runs: dict[str, list[dict[str, float]]] = {}
        http_runs: dict[str, list[dict[str, float]]] = {}
        tp_ratios: list[float] = []
        for _ in range(config.repeats):
            lat, wall = pair_loop(raw_pair, data, config.requests)
            raw_runs.setdefault("2x1t", []).append(summary(lat, wall))
            for c in config.concurrency:
                total = max(config.requests, 3 * c) if c > 1 else config.requests // 2
                lat, wall = closed_loop(lambda: raw(data), c, total)
                raw_runs.setdefault(f"c{c}", []).append(summary(lat, wall))
                res = http_load.load(url, request, concurrency=c, total=total)
                if res.errors:
                    raise RuntimeError(f"twopass HTTP: {res.errors} errors at concurrency {c}: {res.statuses}")
                http_runs.setdefault(f"c{c}", []).append(summary(res.latencies, res.wall))
            best_raw = max(runs[-1]["throughput_rps"] for runs in raw_runs.values())
            tp_ratios.append(http_runs["c10"][-1]["throughput_rps"] / best_raw)
            log(f"  c10 req/s: http {http_runs['c10'][-1]['throughput_rps']:.1f}, best raw {best_raw:.1f}")
        result["raw"] = {c: median_summary(r) for c, r in raw_runs.items()}
        result["raw"]["best_throughput_rps"] = max(v["throughput_rps"] for v in result["raw"].values())
        result["http"] = {c: median_summary(r) for c, r in http_runs.items()}

        log("fast path: 10 parallel requests (the gibbs scenario)")
        walls: dict[str, list[float]] = {"raw": [], "http": []}
        for _ in range(config.bursts):
            walls["raw"].append(raw_burst(raw, data))
            walls["http"].append(http_load.burst(url, request, 10))
        result["raw"]["burst10_wall_ms"] = round(median(walls["raw"]) * 1000, 1)
        result["http"]["burst10_wall_ms"] = round(median(walls["http"]) * 1000, 1)
        result["http"]["burst10_runs_ms"] = [round(w * 1000, 1) for w in walls["http"]]

    result["ratios"] = {
        "handler_moto_p50_vs_raw": round(median(ratio_runs["handler_moto"]), 3),
        "handler_memory_p50_vs_raw": round(median(ratio_runs["handler_memory"]), 3),
        "http_c1_p50_vs_raw": round(median(ratio_runs["http"]), 3),
        "http_c10_throughput_vs_raw_best": round(median(tp_ratios), 3),
        "http_c10_throughput_vs_raw_c10": ratio(
            result["http"]["c10"]["throughput_rps"], result["raw"]["c10"]["throughput_rps"]
        ),
        "http_burst10_vs_raw_burst10": ratio(result["http"]["burst10_wall_ms"], result["raw"]["burst10_wall_ms"]),
    }
    log(f"  ratios {result['ratios']}")
    return result
