"""Markdown and the latency-against-rate plot for the capacity, overhead and stack sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _calls_table(calls: dict[str, Any]) -> list[str]:
    rows = calls["per_job"]
    sizes = [r["batch_size"] for r in rows]
    names = sorted({(side, name) for r in rows for side in ("api", "worker") for name in r[side]})
    lines = [
        "| side | service operation | " + " | ".join(f"batch {s}" for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for side, name in names:
        cells = " | ".join(f"{r[side].get(name, 0):.3f}" for r in rows)
        lines.append(f"| {side} | {name} | {cells} |")
    for label, key in (("DynamoDB writes", "dynamodb_writes"), ("SQS requests", "sqs_requests"), ("all", "all")):
        cells = " | ".join(f"**{s[key]:.3f}**" for s in calls["summary"])
        lines.append(f"| both | {label} per job | {cells} |")
    idle = calls["idle_worker"]
    lines += [
        "",
        f"An idle worker's own calls, per hour (measured over {idle['seconds']:g} s with every period divided by "
        f"{idle['time_scale']:g}, then scaled back; settings {idle['settings']}): "
        + ", ".join(f"{k} {v}" for k, v in idle["per_hour"].items())
        + ". They do not grow with jobs.",
    ]
    return lines


def _validation_table(validation: dict[str, Any]) -> list[str]:
    lines = [
        "| workers | rate (jobs/s) | jobs | mean batch | measured p50 s | predicted p50 s | ratio | measured p99 s "
        "| predicted p99 s | ratio | with the run's own batch times: p50 / p99 ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in validation["rows"]:
        lines.append(
            f"| {r['workers']} | {r['rate']:.2f} | {r['jobs']} | {r['mean_batch']:.2f} | {r['measured_p50_s']:.3f} "
            f"| {r['predicted_p50_s']:.3f} | {r['ratio_p50']:.2f} | {r['measured_p99_s']:.3f} "
            f"| {r['predicted_p99_s']:.3f} | {r['ratio_p99']:.2f} "
            f"| {r['predicted_run_curve_ratio_p50']:.2f} / {r['predicted_run_curve_ratio_p99']:.2f} |"
        )
    lines.append("")
    for workers, cal in validation["calibrations"].items():
        curve = ", ".join(f"{k}: {v:.3f}" for k, v in cal["curve"].items())
        lines.append(
            f"Calibration, {workers} worker(s): capacity {cal['capacity_jobs_per_s']} jobs/s (a backlog drained), "
            f"overhead per job {cal['overhead_s'] * 1000:.0f} ms (lone jobs: latency minus model time), "
            f"model seconds by batch size {{{curve}}}."
        )
    met = "within" if validation["within_25_percent"] else "NOT within"
    lines += ["", f"Every prediction {met} 25 % of the measurement."]
    return lines


def markdown(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    cap = results.get("capacity")
    if cap:
        lines += ["## Requests per job (AWS calls, counted from botocore's events)", ""]
        lines += _calls_table(cap["calls"])
        lines += ["", "## Cost per million images (list prices; see docs/cost-and-capacity.md)", ""]
        cost = cap["cost"]
        lines += ["Measured example (this machine's CPU throughput stands in for a GPU's):", ""]
        lines += [cost["cpu_example"]["markdown"], ""]
        for key in sorted(k for k in cost if k.startswith("input_")):
            c = cost[key]
            fast = c.get("sagemaker_async_with_fast_path_usd_per_million")
            lines.append(
                f"- GPU task at {key.removeprefix('input_')} images/s (input): twopass "
                f"${c['twopass']['total_usd_per_million']:.2f} per million; SageMaker async "
                f"${c['sagemaker_async']['total_usd_per_million']:.2f} (${fast:.2f} with the same fast path)."
            )
        lines += ["", "Input 400 images/s in full:", "", cost["input_400"]["markdown"], ""]
        lines += ["## Capacity planner against the local stack", ""]
        lines += _validation_table(cap["validation"])
        h = cap["handler"]
        lines += [
            "",
            f"Lambda handler p50 (REST events, moto in-process): POST /predict {h['predict_p50_ms']} ms, "
            f"GET /job {h['job_p50_ms']} ms. Log bytes per job: {cap['validation']['log_bytes_per_job']}.",
            "",
        ]
    over = results.get("overhead")
    if over:
        c1, r = over["c1"], over["ratios"]
        lines += [
            "## Fast-path overhead at concurrency 1 (interleaved)",
            "",
            "| path | p50 ms | p99 ms |",
            "|---|---|---|",
            *(f"| {name} | {v['p50_ms']} | {v['p99_ms']} |" for name, v in c1.items()),
            "",
            f"HTTP twopass / bare FastAPI p50: {r['http_vs_bare']:.2f} (goal ≤ 1.3); handler / raw p50: "
            f"{r['handler_vs_raw']:.2f} (goal ≤ 1.2). Raw and the handler run in processes of their own, "
            f"as on Lambda; each ratio is the {over.get('ratio_basis', 'median over the repeats')}.",
            "",
        ]
    stack = results.get("stack")
    if stack:
        b, n = stack["before"], stack["now"]
        lines += [
            "## Local stack (make run, worker running): POST /predict",
            "",
            "| code | c=1 p50 ms | c=1 req/s | c=10 req/s | c=10 p50 ms |",
            "|---|---|---|---|---|",
            *(
                f"| {label} | {v['c1_p50_ms']} | {v['c1_rps']} | {v['c10_rps']} | {v['c10_p50_ms']} |"
                for label, v in ((f"before ({stack['before_commit']})", b), ("now", n))
            ),
            "",
            f"c=10 throughput now / before: {stack['c10_throughput_ratio']:.2f} (goal ≥ 2).",
            "",
        ]
    return lines


def latency_figure(results: dict[str, Any], path: Path) -> bool:
    """Job latency against arrival rate: the simulator's curve and the local stack's measurements."""
    cap = results.get("capacity")
    if not cap:
        return False
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    validation = cap["validation"]
    for workers, cal in validation["calibrations"].items():
        points = [p for p in cal.get("simulated_curve", []) if p["p99_s"] == p["p99_s"]]
        (line,) = ax.plot(
            [p["rate"] for p in points], [p["p50_s"] for p in points], label=f"simulated p50, {workers} worker(s)"
        )
        ax.plot([p["rate"] for p in points], [p["p99_s"] for p in points], linestyle="--", color=line.get_color(),
                label=f"simulated p99, {workers} worker(s)")  # fmt: skip
        rows = [r for r in validation["rows"] if str(r["workers"]) == workers]
        ax.scatter([r["rate"] for r in rows], [r["measured_p50_s"] for r in rows], color=line.get_color(), marker="o")
        ax.scatter([r["rate"] for r in rows], [r["measured_p99_s"] for r in rows], color=line.get_color(), marker="x")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate, jobs/s")
    ax.set_ylabel("job latency, s (o measured p50, x measured p99)")
    ax.set_title("Local stack: job latency against rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
