"""twopass benchmarks: the slow path against raw onnxruntime, the fast path, cold start, peers, AWS
calls per job and cost, the capacity planner against the local stack, fast-path overhead, make run.

    python bench/run.py            # full run (~15 min on 2 cores)
    python bench/run.py --quick    # short run (~5 min), same sections, fewer repeats
    python bench/run.py --smoke    # every section at its smallest size (~2 min): checks that each runs
    python bench/run.py --only slow,cold
    python bench/run.py --only capacity,overhead,stack

Every run writes ``latest.json``, ``latest.md`` and (with matplotlib) ``latest.png`` and
``latest-latency.png`` to ``--out``; they change at every run and are not committed. A full run
(every section, neither ``--quick`` nor ``--smoke``) also writes ``<UTC date>.md``: the dated
summary to commit and cite (docs/performance.md does); a full-length run of some sections
(``--only``) writes ``<UTC date>-<sections>.md``.

Everything runs the real models on the real photos in tests/data (and the bundled cat); nothing is
mocked but the AWS services (moto). Each figure is the median over repeated runs, and each ratio
is computed within one run before the median is taken.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "layers" / "twopass"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from bench.sections import SECTIONS  # noqa: E402  (after the path above)

_T = TypeVar("_T")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python bench/run.py",
        description=(
            "Benchmark twopass on this machine: slow-path worker vs raw onnxruntime and a one-at-a-time "
            "loop (in memory and through a moto server), lone-job latency, fast path (raw vs Lambda handler "
            "vs HTTP), cold start, the fast path side by side with raw onnxruntime and BentoML in alternating "
            "blocks (and the cold start against its dependencies' floor), peers (BentoML, gibbs), fp16/CUDA "
            "checks, AWS calls per job, cost per million "
            "images, the capacity planner against the local stack, fast-path overhead against a bare FastAPI "
            "endpoint, and make run throughput against an earlier commit. Writes latest.json, latest.md and, "
            "when matplotlib is installed, latest.png and latest-latency.png to --out; a full run also writes "
            "<UTC date>.md there (and the capacity section, unless --quick or --smoke, twopass/data/measured.json)."
        ),
    )
    parser.add_argument("--quick", action="store_true", help="short run: fewer jobs and repeats (~5 minutes)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every section at its smallest size, to check that each runs: the figures mean nothing; no peer "
        "is installed and make run is compared with itself (no earlier commit checked out)",
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, from {', '.join(SECTIONS)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, help="repeats per measurement (default 3, quick 2)")
    parser.add_argument("--jobs", type=int, help="jobs for the worker throughput runs (default 200, quick 48)")
    parser.add_argument("--moto-jobs", type=int, help="jobs through the moto server (default 120, quick 40)")
    parser.add_argument(
        "--no-tune",
        action="store_true",
        help="skip the worker settings sweep and use the setup below (quick runs never sweep)",
    )
    parser.add_argument("--max-batch-size", type=int, help="worker max_batch_size when not tuning (default 8)")
    parser.add_argument("--decode-threads", type=int, help="worker decode_threads when not tuning (default 1)")
    parser.add_argument(
        "--intra-op-threads", type=int, help="slow model intra_op_threads when not tuning (default 1; 0 = all cores)"
    )
    parser.add_argument(
        "--sessions",
        type=int,
        help="model sessions side by side (TWOPASS_WORKER_PROCESSES) when not tuning (default 2)",
    )
    parser.add_argument(
        "--api-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="TWOPASS_* setting for the API under uvicorn (fast path and peers), on top of "
        "TWOPASS_INTRA_OP_THREADS=1 TWOPASS_INFERENCE_CONCURRENCY=2; repeatable",
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="do not create .venv-bench-bento or pip-install gibbs; peers that are missing are reported as such",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "results",
        help="directory for latest.json, latest.md, latest.png and a full run's <date>.md (default bench/results)",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    return args


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    from bench.common import Target

    out: list[Target] = []
    slow = results.get("slow_path")
    if slow:
        r, mem, lone = slow["ratios"], slow["memory"], slow["lone_job"]
        bound = mem["raw_infer_best"] / mem["one_at_a_time_memory"]
        out += [
            Target(
                "worker / raw batched onnxruntime (infer only)",
                "≥ 0.9",
                r["worker_vs_raw_infer_best"],
                0.9,
                note="raw infer-only skips JPEG decode + resize, which the worker does on the same cores",
            ),
            Target("worker / raw decode+infer pipeline", "≥ 0.9", r["worker_vs_raw_pipeline"], 0.9),
            Target(
                "worker / one-at-a-time loop",
                "≥ 3",
                r["worker_vs_one_at_a_time"],
                3.0,
                note=f"ceiling on this CPU: raw infer-only / one-at-a-time = {bound:.2f}",
            ),
        ]
        if "moto_worker_vs_moto_one_at_a_time" in r:
            out.append(
                Target(
                    "worker / one-at-a-time, through moto",
                    "≥ 3",
                    r["moto_worker_vs_moto_one_at_a_time"],
                    3.0,
                    note="the moto server is the bottleneck and shares the 2 cores",
                )
            )
        for q in ("p50", "p99"):
            budget = lone[f"{q}_budget_ms"]
            out.append(
                Target(
                    f"lone job {q} (ms)",
                    f"≤ raw single + max_wait = {budget:.0f}",
                    lone["worker"][f"{q}_ms"],
                    budget,
                    higher_is_better=False,
                )
            )
    fast = results.get("fast_path")
    if fast:
        r = fast["ratios"]
        out += [
            Target(
                "handler p50 / raw p50 (moto mock_aws)",
                "≤ 1.2",
                r["handler_moto_p50_vs_raw"],
                1.2,
                higher_is_better=False,
                note="moto's in-process DynamoDB + SQS cost CPU here, not network waits",
            ),
            Target(
                "handler p50 / raw p50 (in-memory store/queue)",
                "≤ 1.2",
                r["handler_memory_p50_vs_raw"],
                1.2,
                higher_is_better=False,
            ),
            Target(
                "HTTP c=10 throughput / best raw throughput",
                "≥ 0.8",
                r["http_c10_throughput_vs_raw_best"],
                0.8,
                note="uvicorn + FastAPI + app cost CPU per request on the same 2 cores",
            ),
        ]
    out += capacity_targets(results)
    out += side_targets(results)
    cold = results.get("cold_start")
    if cold:
        out.append(
            Target(
                "cold start: import + load + first answer (s)",
                "≤ 1.0",
                cold["median"]["total_s"],
                1.0,
                higher_is_better=False,
                note="FastAPI + botocore imports and client creation dominate",
            )
        )
    return [t.to_dict() for t in out]


def side_targets(results: dict[str, Any]) -> list[Any]:
    """The fast path side by side with raw onnxruntime, and the in-memory cold start (``side``)."""
    from bench.common import Target
    from bench.side_by_side import GOALS

    side = results.get("side_by_side")
    if not side:
        return []
    r, cold = side["ratios"]["twopass"], side["cold_start"]
    floor_s = cold["floor"]["median"]["total_s"]
    floor = f"the dependencies alone: {floor_s:.3f} s (twopass ÷ floor {cold['twopass_vs_floor']})"
    return [
        Target("side by side: C=10 req/s ÷ raw onnxruntime", f"≥ {GOALS['c10_throughput_vs_raw']}",
               r["c10_throughput_vs_raw"], GOALS["c10_throughput_vs_raw"],
               note=f"raw CPU ÷ twopass CPU per request {r['c10_cpu_efficiency_vs_raw']}"),
        Target("side by side: C=1 p50 ÷ raw onnxruntime", f"≤ {GOALS['c1_p50_vs_raw']}", r["c1_p50_vs_raw"],
               GOALS["c1_p50_vs_raw"], higher_is_better=False),
        Target("cold start, in-memory backends (s)", f"≤ {GOALS['cold_start_s']}",
               cold["twopass"]["median"]["total_s"], GOALS["cold_start_s"], higher_is_better=False, note=floor),
    ]  # fmt: skip


def capacity_targets(results: dict[str, Any]) -> list[Any]:
    """Requests per job, the planner against the local stack, fast-path overhead, local stack throughput."""
    from bench.common import Target

    out: list[Target] = []
    cap = results.get("capacity")
    if cap:
        batched = [s for s in cap["calls"]["summary"] if s["batch_size"] >= 8]
        out += [
            Target("DynamoDB writes per job, batch ≥ 8", "≤ 2", max(s["dynamodb_writes"] for s in batched), 2.0,
                   higher_is_better=False, note="record + final: the start is folded into the final write"),
            Target("SQS requests per job, batch ≥ 8", "≤ 1.3", max(s["sqs_requests"] for s in batched), 1.3,
                   higher_is_better=False, note="send + receives of 10 + deletes shared across batches, 10 a call"),
        ]  # fmt: skip
        rows = cap["validation"]["rows"]
        if rows:
            worst = max(abs(r[k] - 1) for r in rows for k in ("ratio_p50", "ratio_p99"))
            name = "planner vs local stack: worst |predicted / measured - 1| (p50, p99)"
            note = "the API, emulator and load share one core here; the workers have the other"
            out.append(Target(name, "≤ 0.25", worst, 0.25, higher_is_better=False, note=note))
    over = results.get("overhead")
    if over:
        r = over["ratios"]
        bare = Target("HTTP p50 / bare FastAPI p50, c=1", "≤ 1.3", r["http_vs_bare"], 1.3, higher_is_better=False)
        raw = Target("handler p50 / raw p50 (in-memory)", "≤ 1.2", r["handler_vs_raw"], 1.2, higher_is_better=False)
        out += [bare, raw]
    stack = results.get("stack")
    if stack:
        note = f"before {stack['before']['c10_rps']} req/s, now {stack['now']['c10_rps']}"
        name = f"make run c=10 req/s, now / {stack['before_commit']}"
        out.append(Target(name, "≥ 2", stack["c10_throughput_ratio"], 2.0, note=note))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import common

    common.quiet_twopass_logs()
    started = time.time()
    smoke = args.smoke
    # A smoke run writes what a quick one does: no dated summary, no measured.json.
    quick = args.quick or smoke

    def pick(smoke_size: _T, quick_size: _T, full_size: _T) -> _T:
        """This run's size of something: ``--smoke``'s, ``--quick``'s or a full run's."""
        return smoke_size if smoke else quick_size if quick else full_size

    repeats = args.repeats or pick(1, 2, 3)
    api_env = dict(item.split("=", 1) for item in args.api_env)
    results: dict[str, Any] = {
        "meta": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": quick,
            "smoke": smoke,
            "sections": args.sections,
            "repeats": repeats,
            "machine": common.machine(),
            "versions": common.versions(),
            "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        }
    }

    def section(name: str, fn: Any) -> None:
        common.log(f"\n=== {name} ===")
        t0 = time.time()
        try:
            # The app prints EMF metrics to stdout (CloudWatch reads them in Lambda): keep the cost,
            # drop the lines, so stdout carries only the report.
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                results[name] = fn()
        except Exception as exc:
            common.log(f"{name} failed: {exc!r}")
            results[name + "_error"] = repr(exc)
        else:
            results[name]["section_seconds"] = round(time.time() - t0, 1)
            results[name]["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]

    if "slow" in args.sections:
        from bench import slow_path

        tune = not args.no_tune and not quick
        cfg = slow_path.SlowConfig(
            jobs=args.jobs or pick(4, 48, 200),
            moto_jobs=args.moto_jobs or pick(4, 40, 120),
            repeats=repeats,
            batch_sizes=pick((1, 2), (1, 4, 8, 16, 32), (1, 4, 8, 16, 32)),
            raw_images=pick(2, 32, 64),
            lone_jobs=pick(2, 20, 100),
            loop_jobs=pick(2, 40, 40),
            tune=tune,
            tune_jobs=96,
            tune_rounds=2,
            setup=slow_path.Setup(
                max_batch_size=args.max_batch_size or 8,
                decode_threads=args.decode_threads or 1,
                intra_op_threads=1 if args.intra_op_threads is None else args.intra_op_threads,
                sessions=args.sessions or 2,
            ),
        )
        section("slow_path", lambda: slow_path.run(cfg))
    if "fast" in args.sections:
        from bench import fast_path

        fcfg = fast_path.FastConfig(
            requests=pick(4, 80, 300),
            handler_requests=pick(2, 40, 150),
            # c10: the throughput target's concurrency.
            concurrency=pick((1, 10), (1, 10, 50), (1, 10, 50)),
            repeats=repeats,
            bursts=pick(1, 3, 7),
            api_env={**fast_path.HTTP_API_ENV, **api_env},
        )
        section("fast_path", lambda: fast_path.run(fcfg))
    if "cold" in args.sections:
        from bench import cold_start

        section("cold_start", lambda: cold_start.run(cold_start.ColdConfig(repeats=pick(1, 3, 7))))
    if "side" in args.sections:
        from bench import side_by_side

        side = side_by_side.SideConfig(
            rounds=pick(1, 3, 8),
            c1_block=pick(3, 15, 30),
            c10_block=pick(20, 120, 240),
            cold_repeats=pick(1, 3, 5),
            api_env={**side_by_side.API_ENV, **api_env},
            bento=not smoke,
            install=not args.no_install and not smoke,
        )
        section("side_by_side", lambda: side_by_side.run(side))
    if "peers" in args.sections:
        from bench.peers import compare as peers

        pcfg = peers.PeersConfig(
            requests=pick(4, 60, 240),
            repeats=repeats,
            bursts=pick(1, 3, 6),
            install=not args.no_install and not smoke,
            api_env=api_env,
        )
        section("peers", lambda: peers.run(pcfg))
    if "gpu" in args.sections:
        from bench import gpu_check

        seconds, latency_batch = pick(0.05, None, None), pick(1, 8, 8)
        section("gpu", lambda: gpu_check.run(repeats, seconds=seconds, latency_batch=latency_batch))
    if "capacity" in args.sections:
        from bench import capacity

        default = capacity.CapacityConfig()
        ccfg = capacity.CapacityConfig(
            run_seconds=pick(3.0, 10.0, default.run_seconds),
            calibrate_jobs=pick(4, 16, default.calibrate_jobs),
            lone_jobs=pick(1, 8, default.lone_jobs),
            calls_jobs=pick(8, 32, default.calls_jobs),
            calls_idle_seconds=pick(1.0, default.calls_idle_seconds, default.calls_idle_seconds),
            workers=pick((1,), (1,), default.workers),
            loads=pick((0.5,), default.loads, default.loads),
            seeds=pick(2, default.seeds, default.seeds),
            handler_requests=pick(2, default.handler_requests, default.handler_requests),
        )
        section("capacity", lambda: capacity.run(ccfg))
        if "capacity" in results and not quick:
            # The figures twopass cost and twopass plan read as measured (cited by the dated summary).
            capacity.write_measured(results["capacity"]["measured"])
    if "overhead" in args.sections:
        from bench import overhead

        ocfg = overhead.OverheadConfig(requests=pick(10, 40, 150), repeats=repeats)
        section("overhead", lambda: overhead.run(ocfg))
    if "stack" in args.sections:
        from bench import stack_load

        scfg = stack_load.StackConfig(
            rounds=1,
            c1_requests=pick(2, 20, 30),
            c10_requests=pick(10, 60, 120),
            before_root=REPO if smoke else None,
        )
        section("stack", lambda: stack_load.run(scfg))

    results["targets"] = targets(results)
    results["meta"]["duration_s"] = round(time.time() - started, 1)
    results["meta"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    full = not quick and set(args.sections) == set(SECTIONS)
    print(write_outputs(results, args.out, full=full, sections=None if quick else args.sections))
    return 0


def write_outputs(results: dict[str, Any], out: Path, *, full: bool, sections: list[str] | None = None) -> str:
    """``latest.json``, ``latest.md``, ``latest.png`` (when matplotlib is there) and, for a full run,
    ``<UTC date>.md``; returns the Markdown. A missing plotting package costs the PNG, not the run."""
    from bench import capacity_report, common, report

    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    text = report.markdown(results)
    written = ["latest.json", "latest.md"]
    (out / "latest.md").write_text(text + "\n")
    if report.figure(results, out / "latest.png"):
        written.append("latest.png")
        if capacity_report.latency_figure(results, out / "latest-latency.png"):
            written.append("latest-latency.png")
    else:
        common.log("matplotlib is not installed: no latest.png (pip install -r bench/requirements-plot.txt)")
    date = str(results["meta"]["started"])[:10]
    # A full run's summary is <date>.md; a full-length run of some sections, <date>-<sections>.md.
    dated = f"{date}.md" if full else f"{date}-{'-'.join(sections)}.md" if sections else None
    if dated:
        (out / dated).write_text(text + "\n")
        written.append(dated)
    common.log(f"\nwrote {', '.join(written)} to {out} in {results['meta'].get('duration_s', '?')} s")
    return text


if __name__ == "__main__":
    sys.exit(main())
