"""Markdown tables and a PNG figure from a results dict (what ``bench/run.py`` writes as ``latest.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.sections import SECTIONS


def _f(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _kind(meta: dict[str, Any]) -> str:
    """The kind of run: full, quick, smoke, or which sections a full-length partial run measured."""
    sections = meta.get("sections") or list(SECTIONS)
    kind = "smoke" if meta.get("smoke") else "quick" if meta.get("quick") else "full"
    return f"{kind} run" if set(sections) == set(SECTIONS) else f"{kind}-length run of {', '.join(sections)}"


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    lines = [
        "# twopass benchmark",
        "",
        f"Run {meta.get('started', '?')} on {meta.get('machine', {}).get('cpus', '?')} CPU(s) "
        f"({meta.get('machine', {}).get('cpu_model', '?')}), {_kind(meta)}, "
        f"{meta.get('duration_s', '?')} s. Every figure is a median over repeated runs; every ratio is "
        "computed within one run, then the median taken. Load average at start "
        f"{meta.get('machine', {}).get('load_avg_at_start')}, at end {meta.get('load_avg_at_end')}.",
        "",
    ]
    targets = results.get("targets", [])
    if targets:
        lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
        for t in targets:
            lines.append(f"| {t['name']} | {t['goal']} | {t['value']:.3g} | {'✅' if t['met'] else '❌'} {t['note']} |")
        lines.append("")

    slow = results.get("slow_path")
    if slow:
        mem = slow["memory"]
        lines += [
            "## Slow path (EfficientNet-Lite2 fp32, CPU)",
            "",
            f"Worker setup: `{slow['setup_env']}` (max_wait_ms {slow['settings']['max_wait_ms']}, "
            f"receivers {slow['settings']['receivers']}). CPU per image: raw pipeline "
            f"{mem['raw_pipeline_cpu_ms_per_image']:.0f} ms, worker {mem['worker_cpu_ms_per_image']:.0f} ms.",
            "",
            "| path | images/s | × raw infer (best batch) |",
            "|---|---|---|",
        ]
        raw = slow["raw_infer_images_per_s"]
        for b in slow["config"]["batch_sizes"]:
            for key, label in ((f"1x2t_b{b}", "1 session × 2 threads"), (f"2x1t_b{b}", "2 sessions × 1 thread")):
                lines.append(f"| raw `session.run`, {label}, batch {b} (tensors ready) | {raw[key]:.1f} | "
                             f"{raw[key] / raw[slow['raw_best']]:.2f} |")  # fmt: skip
        lines.append(
            f"| raw best, re-measured in each round ({slow['raw_best']}) | {mem['raw_infer_best']:.1f} | 1.00 |"
        )
        rows = [
            ("raw decode + infer pipeline, worker setup", mem["raw_pipeline"]),
            ("**twopass worker**, MemoryQueue + MemoryJobStore", mem["worker_memory"]),
            ("one-at-a-time loop, MemoryQueue (seed backend)", mem["one_at_a_time_memory"]),
        ]
        moto = slow.get("moto", {})
        if "worker" in moto:
            rows += [
                ("twopass worker through moto server (SQS + DynamoDB)", moto["worker"]["images_per_s"]),
                ("one-at-a-time loop through moto server", moto["one_at_a_time"]["images_per_s"]),
                ("moto alone: receive + delete, no model (msg/s)", moto["emulator_drain_msgs_per_s"]),
            ]
        for name, value in rows:
            lines.append(f"| {name} | {value:.1f} | {value / mem['raw_infer_best']:.2f} |")
        r = slow["ratios"]
        if "worker" in moto:
            lines += [
                "",
                f"The moto server itself burns {moto['worker']['moto_cpu_ms_per_job']:.0f} ms of CPU per job under the "
                "worker (receive, mark running, record, delete) and "
                f"{moto['one_at_a_time']['moto_cpu_ms_per_job']:.0f} ms under the one-at-a-time loop (no running "
                "mark), on the same 2 cores as the model: an emulator limit, not an SQS/DynamoDB one.",
            ]
        lines += [
            "",
            f"Within-run ratios: worker / raw infer best {r['worker_vs_raw_infer_best']:.2f}, "
            f"worker / raw infer with the worker's sessions and batch {r['worker_vs_raw_infer_same_setup']:.2f}, "
            f"worker / raw decode+infer pipeline {r['worker_vs_raw_pipeline']:.2f}, "
            f"worker / one-at-a-time {r['worker_vs_one_at_a_time']:.2f}"
            + (
                f", moto worker / moto one-at-a-time {r['moto_worker_vs_moto_one_at_a_time']:.2f}."
                if "moto_worker_vs_moto_one_at_a_time" in r
                else "."
            ),
            "",
        ]
        lone = slow["lone_job"]
        lines += [
            "Lone job (idle worker, MemoryQueue), publish → result recorded:",
            "",
            "| | p50 ms | p99 ms |",
            "|---|---|---|",
            f"| raw decode + batch-1 inference, worker's session | {lone['raw_single_job']['p50_ms']:.1f} | "
            f"{lone['raw_single_job']['p99_ms']:.1f} |",
            f"| raw decode + batch-1 inference, default session (2 threads) | "
            f"{lone['raw_single_job_default_session']['p50_ms']:.1f} | "
            f"{lone['raw_single_job_default_session']['p99_ms']:.1f} |",
            f"| budget: raw + max_wait_ms ({lone['max_wait_ms']} ms) | {lone['p50_budget_ms']:.1f} | "
            f"{lone['p99_budget_ms']:.1f} |",
            f"| twopass worker | {lone['worker']['p50_ms']:.1f} | {lone['worker']['p99_ms']:.1f} |",
            "",
        ]

    fast = results.get("fast_path")
    if fast:
        c1 = fast["c1"]
        lines += [
            "## Fast path (EfficientNet-Lite0 int8, CPU)",
            "",
            f"API settings: `{fast['api_settings']}`; payload: {fast['payload']}; HTTP server: {fast['http_backend']}.",
            "",
            "Concurrency 1, the four paths taking turns in blocks of 10 requests:",
            "",
            "| path | p50 ms | p99 ms | p50 × raw |",
            "|---|---|---|---|",
            f"| raw decode+preprocess+infer | {c1['raw']['p50_ms']:.1f} | {c1['raw']['p99_ms']:.1f} | 1.00 |",
            f"| Lambda handler (Mangum, REST event), moto mock_aws | {c1['handler_moto']['p50_ms']:.1f} | "
            f"{c1['handler_moto']['p99_ms']:.1f} | {fast['ratios']['handler_moto_p50_vs_raw']:.2f} |",
            f"| Lambda handler, MemoryJobStore + MemoryQueue | {c1['handler_memory']['p50_ms']:.1f} | "
            f"{c1['handler_memory']['p99_ms']:.1f} | {fast['ratios']['handler_memory_p50_vs_raw']:.2f} |",
            f"| HTTP (uvicorn), JSON base64 | {c1['http']['p50_ms']:.1f} | {c1['http']['p99_ms']:.1f} | "
            f"{fast['ratios']['http_c1_p50_vs_raw']:.2f} |",
            "",
            "Under concurrency (closed loop; raw = threads sharing one session, in the same rounds):",
            "",
            "| concurrency | raw p50 ms | raw p99 ms | raw req/s | HTTP p50 ms | HTTP p99 ms | HTTP req/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in fast["config"]["concurrency"]:
            r, x = fast["raw"][f"c{c}"], fast["http"][f"c{c}"]
            lines.append(f"| {c} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_rps']:.1f} | "
                         f"{x['p50_ms']:.1f} | {x['p99_ms']:.1f} | {x['throughput_rps']:.1f} |")  # fmt: skip
        r2 = fast["raw"]["2x1t"]
        lines.append(f"| raw, 2 sessions × 1 thread, 2 threads | {r2['p50_ms']:.1f} | {r2['p99_ms']:.1f} | "
                     f"{r2['throughput_rps']:.1f} | | | |")  # fmt: skip
        r = fast["ratios"]
        lines += [
            "",
            f"10 parallel requests (the gibbs scenario), wall time: HTTP {fast['http']['burst10_wall_ms']:.0f} ms, "
            f"raw with 10 threads {fast['raw']['burst10_wall_ms']:.0f} ms.",
            "",
            f"HTTP c=10 throughput / best raw throughput {r['http_c10_throughput_vs_raw_best']:.2f} "
            f"(/ raw at c=10 {r['http_c10_throughput_vs_raw_c10']:.2f}).",
            "",
        ]

    cold = results.get("cold_start")
    if cold:
        m = cold["median"]
        lines += [
            "## Cold start (fresh interpreter → first answer, real REST event, moto server behind)",
            "",
            "| phase | seconds |",
            "|---|---|",
            f"| interpreter start | {m['interpreter_start_s']:.3f} |",
            f"| init: import the handler module (FastAPI, twopass, boto3 …), build the app | {m['init_s']:.3f} |",
            f"| (within init, on a thread of its own: fast model load + warm-up run) | {m['model_load_s']:.3f} |",
            f"| first answer (boto3 clients, DynamoDB put, SQS send) | {m['first_answer_s']:.3f} |",
            f"| **total** | **{m['total_s']:.3f}** |",
            f"| (for scale: the second answer, warm) | {m['second_answer_s']:.3f} |",
        ]
        imp = cold.get("importtime", {}).get("init", {})
        if imp:
            lines += [
                "",
                "Import time by package (`-X importtime`, self time summed, tracing inflates it): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in list(imp.items())[:8])
                + ".",
            ]
        lines.append("")

    side = results.get("side_by_side")
    if side:
        from bench.side_by_side import markdown as side_markdown

        lines += side_markdown(side).splitlines()

    peers = results.get("peers")
    if peers:
        lines += [
            "## Peers (same fast model, same preprocessing, same client, interleaved rounds)",
            "",
            "| server | c=1 p50 ms | c=1 p99 ms | c=10 p50 ms | c=10 p99 ms | c=10 req/s | 10 parallel: wall ms "
            "| failed requests |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name in ("twopass", "bentoml", "gibbs"):
            if name in peers:
                p = peers[name]
                lines.append(
                    f"| {name} | {p['c1']['p50_ms']:.1f} | {p['c1']['p99_ms']:.1f} | {p['c10']['p50_ms']:.1f} | "
                    f"{p['c10']['p99_ms']:.1f} | {p['c10']['throughput_rps']:.1f} | {_f(p['burst10_wall_ms'], 0)} | "
                    f"{p.get('failed_requests', 0)} |"
                )
            elif f"{name}_error" in peers:
                lines.append(f"| {name} | not run: {peers[f'{name}_error'][:160]} | | | | | | |")
        if peers.get("ratios"):
            lines += ["", "Ratios twopass / peer: " + ", ".join(f"{k} {v:.2f}" for k, v in peers["ratios"].items())]
        lines.append("")

    gpu = results.get("gpu")
    if gpu:
        lines += ["## GPU path (checked on CPU: this machine has no GPU)", ""]
        fp16 = gpu.get("fp16", {})
        if fp16.get("present"):
            lines.append(
                f"fp16 slow model vs fp32 on {fp16['photos']} photos + {fp16.get('views', 0)} views: top-1 agreement "
                f"{fp16['top1_agreement']:.1%} (views {fp16.get('views_top1_agreement', float('nan')):.1%}), "
                f"max |Δlogit| {fp16['max_abs_logit_diff']:.3f}. CPU batch-8 images/s: fp32 "
                f"{fp16['cpu_images_per_s_batch8']['fp32']:.1f}, fp16 {fp16['cpu_images_per_s_batch8']['fp16']:.1f}."
            )
        lines.append(f"CUDA provider options: `{gpu.get('cuda_provider_options')}`.")
        lines.append("")
    from bench.capacity_report import markdown as capacity_markdown

    lines += capacity_markdown(results)
    return "\n".join(lines)


def figure(results: dict[str, Any], path: Path) -> bool:
    """Draw the plots to ``path``; ``False`` (and no file) when matplotlib is not installed.

    The figure is optional: a run without it keeps its JSON and Markdown, which hold every number.
    """
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    slow = results.get("slow_path")
    ax = axes[0]
    if slow:
        mem = slow["memory"]
        bars = [("raw infer\n(best batch)", mem["raw_infer_best"]), ("raw decode\n+infer", mem["raw_pipeline"]),
                ("twopass\nworker", mem["worker_memory"]), ("one at\na time", mem["one_at_a_time_memory"])]  # fmt: skip
        moto = slow.get("moto", {})
        if "worker" in moto:
            bars += [("worker\nvia moto", moto["worker"]["images_per_s"]),
                     ("one at a time\nvia moto", moto["one_at_a_time"]["images_per_s"])]  # fmt: skip
        colors = ["#888888", "#aaaaaa", "#1f77b4", "#d62728", "#6baed6", "#f4a6a6"][: len(bars)]
        ax.bar([b[0] for b in bars], [b[1] for b in bars], color=colors)
        for i, (_, v) in enumerate(bars):
            ax.text(i, v, f"{v:.1f}\n({v / mem['raw_infer_best']:.2f}×)", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("images / s")
        ax.set_title("Slow path throughput (Lite2 fp32, CPU)")
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(y=0.2)

    ax = axes[1]
    series: list[tuple[str, list[int], list[float], list[float]]] = []
    fast = results.get("fast_path")
    if fast:
        cs = fast["config"]["concurrency"]
        for key, label in (("raw", "raw"), ("http", "twopass HTTP")):
            # Concurrency 1 comes from the interleaved loop, the rest from the closed-loop rounds.
            points = {**fast[key], "c1": fast["c1"][key]}
            series.append((label, cs, [points[f"c{c}"]["p50_ms"] for c in cs], [points[f"c{c}"]["p99_ms"] for c in cs]))
    peers = results.get("peers")
    if peers:
        for name in ("bentoml", "gibbs"):
            if name in peers:
                cs = [int(k[1:]) for k in peers[name] if k.startswith("c") and k[1:].isdigit()]
                series.append((name, cs, [peers[name][f"c{c}"]["p50_ms"] for c in cs],
                               [peers[name][f"c{c}"]["p99_ms"] for c in cs]))  # fmt: skip
    for name, cs, p50, p99 in series:
        (line,) = ax.plot(cs, p50, marker="o", label=f"{name} p50")
        ax.plot(cs, p99, marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99")
    if fast:
        h = fast["c1"]
        ax.scatter([1], [h["handler_moto"]["p50_ms"]], marker="s", color="black", label="handler p50 (moto)", zorder=5)
        ax.scatter(
            [1], [h["handler_memory"]["p50_ms"]], marker="D", color="grey", label="handler p50 (memory)", zorder=5
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("latency ms")
    ax.set_title("Fast path latency (Lite0 int8)")
    ax.legend(fontsize=7, ncol=2)

    ax = axes[2]
    cold = results.get("cold_start")
    if cold:
        m = cold["median"]
        parts = [("interpreter", m["interpreter_start_s"]), ("init (model on a thread)", m["init_s"]),
                 ("first answer", m["first_answer_s"])]  # fmt: skip
        left = 0.0
        for (name, v), color in zip(parts, ["#cccccc", "#ff7f0e", "#9467bd"], strict=True):
            ax.barh(["cold start"], [v], left=left, color=color, label=f"{name} {v:.2f}s")
            left += v
        ax.axvline(1.0, color="red", linestyle=":", label="target 1.0 s")
        ax.set_xlabel("seconds")
        ax.set_title("Cold start: import + load + first answer")
        ax.legend(fontsize=8, loc="lower right")

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True
