"""The fast path side by side with raw onnxruntime, and the cold start, in one run.

    python -m bench.side_by_side                      # this checkout; writes <UTC date>-side-by-side.md/.json
    python -m bench.side_by_side --before /tmp/old    # ... and another checkout's API, in the same blocks
    python -m bench.side_by_side --quick              # fewer blocks (a smoke run)

What runs, on the same machine and photo (cat.jpg, the bundled one):

* **raw**: onnxruntime in this process with the card's preprocessing and nothing else. At C=1 one
  session with the API's intra-op threads; at C=10 one single-threaded session per core, one thread
  each (the best raw throughput on a small machine).
* **twopass**: the API as ``make run`` serves it (``bench/serve_memory.py``: the local stack's own
  uvicorn command) over the in-memory job store and queue, ``POST /predict`` with a base64 JSON body.
* **bare**: the same model, session threads and JSON request in a bare FastAPI endpoint that runs
  the model inline on the event loop (``bench/peers/bare_fastapi.py``): no job, queue, validation
  or auth. What HTTP, JSON and the framework cost on their own, between raw and twopass.
* **before** (``--before DIR``): the same from another checkout, to compare two versions of the code
  in one run rather than across runs on a shared machine.
* **bentoml**, when ``.venv-bench-bento`` exists (``bench/peers``; ``install`` creates it): the same
  model behind BentoML.

The paths take turns in blocks (the order rotating each round), so each sees the same stretches of a
shared machine's noise; every ratio compares a block with the raw block of the same round, and the
figure is the median over rounds. C=1: p50 of the block ÷ raw's p50; C=10: requests per second ÷
raw's; at C=1 the paths take turns request by request (the machine's speed drifts within seconds),
each HTTP path on one keep-alive connection of ``http_load.KeepAlive`` (as lean a client as the C=10
generator, so that the client's own time is not counted as the server's).
Cold start: fresh interpreters importing the app, building it over in-memory backends as the
Lambda init does (JSON logs, EMF on), warming the model and answering ``GET /predict/test`` through
Mangum; the checkouts and the floor (the dependencies alone, ``cold_child.py --floor``) take turns,
median of ``cold_repeats`` each.

``bench/run.py --only side`` runs the same as one of its sections (the report's targets read it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench import http_load  # noqa: E402
from bench.common import (  # noqa: E402
    RESULTS,
    cat_jpeg,
    child_env,
    deployed_bytecode,
    free_port,
    latency_summary,
    log,
    machine,
    median,
    process_cpu_seconds,
    server,
    versions,
)
from bench.fast_path import RawFastPath, api_settings  # noqa: E402

#: The API's settings under test beyond the project's defaults: one intra-op thread per session, so
#: parallel requests each get a core (the inference concurrency is the project's default).
API_ENV = {"TWOPASS_INTRA_OP_THREADS": "1"}
#: Lambda's environment for the cold start (JSON logs, per-invocation EMF), without its AWS calls.
COLD_ENV = {
    "AWS_LAMBDA_FUNCTION_NAME": "twopass-ApiFunction",
    "POWERTOOLS_METRICS_DISABLED": "false",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "TWOPASS_PROVIDERS": "cpu",
}
GOALS = {"c10_throughput_vs_raw": 0.8, "c1_p50_vs_raw": 1.2, "cold_start_s": 0.6}
#: Paths served by processes whose CPU this bench does not count (their CPU column means nothing).
UNCOUNTED = frozenset({"bare", "bentoml"})


@dataclass(frozen=True)
class SideConfig:
    rounds: int = 8
    c1_block: int = 30
    c10_block: int = 240
    cold_repeats: int = 5
    api_env: dict[str, str] = field(default_factory=lambda: dict(API_ENV))
    #: Another checkout whose API is measured in the same blocks (its ``bench/`` must hold this file's
    #: ``serve_memory.py`` and ``cold_child.py --memory``).
    before: Path | None = None
    #: Measure BentoML when its venv exists; ``install``: create the venv first where it does not.
    bento: bool = True
    install: bool = False


@dataclass
class Subject:
    """One path under test: a C=1 call, a C=10 block runner, and the CPU seconds it has used so far."""

    name: str
    c1: Callable[[], object]
    c10: Callable[[int], tuple[int, float]]
    close: Callable[[], None] = lambda: None
    #: Server process CPU seconds (0 for a path in this process); this process's own is added to it.
    server_cpu: Callable[[], float] = lambda: 0.0

    def cpu(self) -> float:
        return self.server_cpu() + time.process_time()


def raw_paths(config: SideConfig) -> Subject:
    settings = api_settings(config.api_env)
    data = cat_jpeg()
    single = RawFastPath(settings.fast_model, intra_op_threads=settings.intra_op_threads)
    cores = os.cpu_count() or 2
    sessions = [RawFastPath(settings.fast_model, intra_op_threads=1) for _ in range(cores)]
    pool = ThreadPoolExecutor(cores)

    def c10(total: int) -> tuple[int, float]:
        def go(i: int) -> None:
            for _ in range(total // cores):
                sessions[i](data)

        t0 = time.perf_counter()
        list(pool.map(go, range(cores)))
        return (total // cores) * cores, time.perf_counter() - t0

    return Subject("raw", lambda: single(data), c10, lambda: pool.shutdown())


def http_path(name: str, url: str, pid: int | None = None, path: str = "/predict") -> Subject:
    request = http_load.json_request(url, path, cat_jpeg())
    client = http_load.KeepAlive(url, request)

    def c1() -> None:
        status = client()
        if status != 200:
            raise RuntimeError(f"{name}: HTTP {status} at C=1")

    def c10(total: int) -> tuple[int, float]:
        res = http_load.load(url, request, concurrency=10, total=total)
        if res.errors:
            raise RuntimeError(f"{name}: {res.errors} failed requests at C=10: {res.statuses}")
        return len(res.latencies), res.wall

    return Subject(name, c1, c10, client.close, (lambda: process_cpu_seconds(pid)) if pid else lambda: 0.0)


@contextlib.contextmanager
def twopass_server(root: Path, api_env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """``bench.serve_memory`` from ``root``: that checkout's code, the local stack's command."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = child_env({"TWOPASS_PROVIDERS": "cpu", **api_env})
    env["PYTHONPATH"] = os.pathsep.join([str(root / "layers" / "twopass"), str(root)])
    args = [sys.executable, "-m", "bench.serve_memory", str(port)]
    with server(args, f"{url}/health", env=env, timeout=120, cwd=root) as proc:
        yield url, proc.pid


def _block(path: Subject, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        path.c1()
        out.append(time.perf_counter() - t0)
    return out


def measure(paths: list[Subject], config: SideConfig) -> dict[str, Any]:
    """Alternating blocks at C=1 and C=10; ratios against the raw block of the same round."""
    raw = paths[0]
    for p in paths:  # warm every path
        _block(p, 5)
        p.c10(40)
    c1: dict[str, list[float]] = {p.name: [] for p in paths}
    c1_ratio: dict[str, list[float]] = {p.name: [] for p in paths[1:]}
    rps: dict[str, list[float]] = {p.name: [] for p in paths}
    rps_ratio: dict[str, list[float]] = {p.name: [] for p in paths[1:]}
    cpu_ms: dict[str, list[float]] = {p.name: [] for p in paths}
    cpu_ratio: dict[str, list[float]] = {p.name: [] for p in paths[1:]}
    for r in range(config.rounds):
        order = paths[r % len(paths) :] + paths[: r % len(paths)]
        # C=1 one request per path in turn: this machine's speed drifts within seconds (a path's
        # block of requests and the next one's can see a third apart), a request and its neighbour do not.
        lat: dict[str, list[float]] = {p.name: [] for p in order}
        for _ in range(config.c1_block):
            for p in order:
                lat[p.name] += _block(p, 1)
        p50 = {name: median(values) for name, values in lat.items()}
        for name, values in lat.items():
            c1[name] += values
        thr, cpu = {}, {}
        for p in order:
            cpu0 = p.cpu()
            n, wall = p.c10(config.c10_block)
            cpu[p.name] = (p.cpu() - cpu0) / n
            thr[p.name] = n / wall
            rps[p.name].append(thr[p.name])
            cpu_ms[p.name].append(cpu[p.name] * 1000)
        for p in paths[1:]:
            c1_ratio[p.name].append(p50[p.name] / p50[raw.name])
            rps_ratio[p.name].append(thr[p.name] / thr[raw.name])
            cpu_ratio[p.name].append(cpu[raw.name] / cpu[p.name])
        log(
            f"  round {r + 1}: C=1 p50 ms "
            + ", ".join(f"{k} {v * 1000:.2f}" for k, v in p50.items())
            + "; C=10 req/s "
            + ", ".join(f"{k} {v:.0f}" for k, v in thr.items())
        )
    return {
        "c1": {name: latency_summary(values) for name, values in c1.items()},
        "c10_rps": {name: round(median(values), 1) for name, values in rps.items()},
        "c10_rps_runs": {name: [round(v, 1) for v in values] for name, values in rps.items()},
        "c10_cpu_ms_per_request": {name: round(median(values), 2) for name, values in cpu_ms.items()},
        "ratios": {
            name: {
                "c1_p50_vs_raw": round(median(c1_ratio[name]), 3),
                "c10_throughput_vs_raw": round(median(rps_ratio[name]), 3),
                # Raw's CPU per request ÷ this path's (server + load generator): the throughput ratio
                # an otherwise idle machine would show, robust to other work sharing the cores.
                "c10_cpu_efficiency_vs_raw": round(median(cpu_ratio[name]), 3),
                "c1_p50_vs_raw_rounds": [round(v, 3) for v in c1_ratio[name]],
                "c10_throughput_vs_raw_rounds": [round(v, 3) for v in rps_ratio[name]],
            }
            for name in c1_ratio
        },
    }


@dataclass(frozen=True)
class ColdSubject:
    """One kind of cold start: ``bench/cold_child.py`` from ``root`` with ``args``."""

    name: str
    root: Path
    args: tuple[str, ...]


def cold_subjects(roots: dict[str, Path], model: str) -> list[ColdSubject]:
    """Each checkout's Lambda init over in-memory backends, and the floor: the dependencies alone."""
    subjects = [ColdSubject(name, root, ("--memory",)) for name, root in roots.items()]
    return [*subjects, ColdSubject("floor", REPO, ("--floor", model))]


def cold_once(subject: ColdSubject, *, importtime: bool = False) -> tuple[dict[str, Any], str]:
    env = deployed_bytecode(child_env(COLD_ENV), subject.root)
    env["PYTHONPATH"] = os.pathsep.join([str(subject.root / "layers" / "twopass"), str(subject.root)])
    t_spawn = time.time()
    flags = ["-X", "importtime"] if importtime else []
    proc = subprocess.run(
        [sys.executable, *flags, str(subject.root / "bench" / "cold_child.py"), *subject.args],
        env=env, cwd=subject.root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"cold start child ({subject}) failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    line = next(x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULT "))
    data: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    data["total_s"] = data["wall_end"] - t_spawn - data["second_answer_s"]
    return data, proc.stderr


def cold_starts(subjects: list[ColdSubject], repeats: int) -> dict[str, Any]:
    """``repeats`` rounds, the subjects taking turns; the first subject's total ÷ each other's, per round."""
    from bench.cold_start import importtime_breakdown

    for subject in subjects:
        cold_once(subject)  # page cache warm, bytecode compiled
    keys = ("init_s", "model_load_s", "first_answer_s", "total_s")
    runs: dict[str, list[dict[str, float]]] = {subject.name: [] for subject in subjects}
    for _ in range(repeats):
        for subject in subjects:
            data, _ = cold_once(subject)
            runs[subject.name].append({k: round(data[k], 3) for k in keys})
        log("  cold start s " + ", ".join(f"{n} {r[-1]['total_s']:.3f}" for n, r in runs.items()))
    out: dict[str, Any] = {}
    first = subjects[0].name
    for subject in subjects[1:]:  # each round's pair, as the fast path's ratios are taken
        pairs = [a["total_s"] / b["total_s"] for a, b in zip(runs[first], runs[subject.name], strict=True)]
        out[f"{first}_vs_{subject.name}"] = round(median(pairs), 3)
    for subject in subjects:
        _, stderr = cold_once(subject, importtime=True)
        out[subject.name] = {
            "median": {k: round(median([r[k] for r in runs[subject.name]]), 3) for k in keys},
            "runs": runs[subject.name],
            "importtime": importtime_breakdown(stderr)["init"],
        }
    return out


def _inference_threads(settings: Any) -> int:
    """The API's inference pool size under ``settings`` (the project's rule where it is left at 0)."""
    threads = getattr(settings, "inference_threads", None)
    return int(threads) if threads is not None else int(settings.inference_concurrency)


def run(config: SideConfig) -> dict[str, Any]:
    from bench.overhead import bare_http
    from bench.peers.compare import BENTO_VENV, bento_http, ensure_bento

    result: dict[str, Any] = {
        "config": {**config.__dict__, "before": str(config.before) if config.before else None},
        "api_settings": {
            "intra_op_threads": api_settings(config.api_env).intra_op_threads,
            "inference_concurrency": _inference_threads(api_settings(config.api_env)),
        },
        "payload": 'POST /predict {"image_data": base64(cat.jpg)} (451x300 JPEG, 35 KB)',
    }
    roots = {"twopass": REPO, **({"before": config.before} if config.before else {})}
    with contextlib.ExitStack() as stack:
        paths = [raw_paths(config)]
        for name, root in roots.items():
            paths.append(http_path(name, *stack.enter_context(twopass_server(root, config.api_env))))
        intra_op = config.api_env.get("TWOPASS_INTRA_OP_THREADS", "1")
        # Its server's CPU is not counted (wall ratios only): the path is a reference, not a subject.
        paths.append(http_path("bare", stack.enter_context(bare_http(intra_op))))
        bento = ensure_bento(config.install) if config.bento else None
        if bento is not None:
            parallel = result["api_settings"]["inference_concurrency"]
            # BentoML serves from child processes of its own: their CPU is not counted (wall ratios only).
            paths.append(http_path("bentoml", stack.enter_context(bento_http(bento, parallel, intra_op))))
        else:
            missing = f"{BENTO_VENV.name} does not exist (bench/peers/compare.py creates it)"
            result["bentoml"] = f"not measured: {missing if config.bento else 'left out'}"
            log(f"side by side: {result['bentoml']}")
        log("side by side: C=1 and C=10, " + ", ".join(p.name for p in paths) + " in alternating blocks")
        result.update(measure(paths, config))
        for p in paths:
            p.close()
    subjects = cold_subjects(roots, api_settings(config.api_env).fast_model)
    log("side by side: cold start, " + ", ".join(s.name for s in subjects) + " taking turns")
    result["cold_start"] = cold_starts(subjects, config.cold_repeats)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The section's Markdown (also used by bench/report.py when bench/run.py ran it)."""
    s = result["api_settings"]
    lines = [
        "## Fast path side by side with raw onnxruntime (in-memory backends)",
        "",
        f"twopass as `make run` serves it (intra_op_threads {s['intra_op_threads']}, inference_concurrency "
        f"{s['inference_concurrency']}), {result['payload']}; raw: onnxruntime in-process, one session at C=1, "
        "one single-threaded session per core at C=10; bare: the same model inline in a bare FastAPI endpoint "
        "(no job, queue, validation or auth). At C=1 the paths take turns request by request, "
        "at C=10 block by block (the order rotating each round); each ratio is taken within a round "
        "against raw, then the median over rounds.",
        "",
        "| path | C=1 p50 ms | C=1 p99 ms | C=1 p50 ÷ raw (goal ≤ 1.2) | C=10 req/s | C=10 req/s ÷ raw (goal ≥ 0.8) "
        "| C=10 CPU ms/request | raw CPU ÷ path CPU |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, c1 in result["c1"].items():
        r = result["ratios"].get(name)
        keys = ("c1_p50_vs_raw", "c10_throughput_vs_raw", "c10_cpu_efficiency_vs_raw")
        ratios = [f"{r[k]:.3f}" for k in keys] if r else ["1", "1", "1"]
        counted = name not in UNCOUNTED
        cpu = f"{result['c10_cpu_ms_per_request'][name]:.2f}" if counted else "(not counted)"
        lines.append(
            f"| {name} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {ratios[0]} | {result['c10_rps'][name]:.1f} "
            f"| {ratios[1]} | {cpu} | {ratios[2] if counted else '(not counted)'} |"
        )
    lines += [
        "",
        "CPU per request counts the server process and this process (the load generator, or raw's own "
        "threads): on a machine other work shares, raw ÷ path CPU is the throughput ratio an idle machine "
        "would show, while the req/s ratio also carries how the scheduler split the cores that round.",
    ]
    if "bentoml" in result and isinstance(result["bentoml"], str):
        lines += ["", f"BentoML {result['bentoml']}."]
    lines += [
        "",
        "Cold start (fresh interpreter → first `GET /predict/test` through Mangum, in-memory backends, "
        "Lambda's logging and metrics; goal ≤ 0.6 s). Init is the imports and the app with the fast model "
        "loading on a thread alongside (its load time overlaps init). The floor is what the dependencies "
        "cost alone: a fresh interpreter importing FastAPI, Mangum, numpy, onnxruntime and Pillow, loading "
        "the same model and classifying the same photo once, with no twopass code:",
        "",
        "| run | init s | model load s | first answer s | total s (median) |",
        "|---|---|---|---|---|",
    ]
    ratios = {k: v for k, v in result["cold_start"].items() if not isinstance(v, dict)}
    for name, cold in result["cold_start"].items():
        if not isinstance(cold, dict):
            continue
        m = cold["median"]
        lines.append(
            f"| {name} | {m['init_s']:.3f} | {m['model_load_s']:.3f} | {m['first_answer_s']:.3f} "
            f"| **{m['total_s']:.3f}** |"
        )
    for key, value in ratios.items():
        lines += ["", f"Cold start {key.replace('_vs_', ' ÷ ')} (median of the rounds' pairs): {value:.3f}."]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, help="another checkout whose API runs in the same blocks")
    parser.add_argument("--quick", action="store_true", help="3 rounds of smaller blocks, 3 cold starts")
    parser.add_argument(
        "--no-bento", action="store_true", help="leave BentoML out (else its venv is created if missing, ~1-2 min)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the dated .md and .json go")
    args = parser.parse_args(argv)
    before = args.before.resolve() if args.before else None
    config = SideConfig(before=before, bento=not args.no_bento, install=not args.no_bento)
    if args.quick:
        config = dataclasses.replace(config, rounds=3, c1_block=15, c10_block=120, cold_repeats=3)
    from bench.common import quiet_twopass_logs

    quiet_twopass_logs()
    started = datetime.now(UTC)
    meta = {"started": started.isoformat(timespec="seconds"), "machine": machine(), "versions": versions()}
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        result = run(config)
    meta["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["meta"] = meta
    m = meta["machine"]
    head = (
        f"# twopass fast path side by side\n\nRun {meta['started']} on {m['cpus']} CPU(s) ({m['cpu_model']}), load "
        f"average at start {m['load_avg_at_start']}, at end {meta['load_avg_at_end']}.\n"
    )
    text = head + "\n" + markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{started.date().isoformat()}-side-by-side{'-quick' if args.quick else ''}"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(text)
    log(f"wrote {stem}.md and {stem}.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
