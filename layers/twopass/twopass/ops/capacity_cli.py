"""``twopass cost`` and ``twopass plan``: dollars per million images, and GPU tasks for a load.

Both read the figures ``make bench`` measured (``twopass/data/measured.json``) and the committed price
table (``twopass/data/prices.json``). A GPU task's throughput was not measured on a GPU here: give
``--images-per-second`` (an input); without it the CPU figures measured here stand in, and the output
says so on its first line.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from twopass.ops import cost as costmodel
from twopass.ops import plan as planner

COST_EPILOG = """\
examples:
  twopass cost --images-per-second 400                 # a g4dn.xlarge task at 400 images/s (your figure)
  twopass cost --images-per-second 900 --instance g5.xlarge --image-kb 120 --polls 0
  twopass cost --json | jq .twopass.total_usd_per_million
"""

PLAN_EPILOG = """\
examples:
  twopass plan --rate 50 --images-per-second 400 --p99 30
  twopass plan --rate 20 --burst 200:600:120 --images-per-second 400 --from-zero
  twopass plan --rate 5 --curve 1:0.04,8:0.2,32:0.75     # a measured batch-time curve
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--instance", default="g4dn.xlarge", help="GPU instance type (default g4dn.xlarge)")
    parser.add_argument(
        "--images-per-second",
        type=float,
        default=0.0,
        help="slow-model images/s one worker task sustains on that instance: an input unless you measured it "
        "(default: the CPU figure measured by make bench, which is not a GPU's)",
    )
    parser.add_argument("--measured", type=Path, help="measured figures (default: the committed measured.json)")
    parser.add_argument("--prices", type=Path, help="price table (default: the committed prices.json)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def cost_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twopass cost",
        description="Dollars per million images: each AWS component from measured figures and list prices, "
        "beside SageMaker Asynchronous Inference on the equivalent instance.",
        epilog=COST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument("--image-kb", type=float, default=35.0, help="encoded image size in KB (default 35)")
    parser.add_argument("--polls", type=float, default=1.0, help="GET /job calls per job (default 1; 0 with callbacks)")
    parser.add_argument(
        "--claim-check-share", type=float, default=0.0, help="share of images over 256 KiB, sent via S3 (default 0)"
    )
    parser.add_argument(
        "--overprovision",
        type=float,
        default=1.0,
        help="tasks paid per task kept busy (default 1: fully used; twopass plan prints it for a load)",
    )
    return parser


def plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twopass plan",
        description="Simulate arrivals, the queue, batching workers and the template's autoscaling; print the "
        "tasks a load needs, its p50/p99 job latency, the cost and the template parameters to set.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser)
    parser.add_argument("--rate", type=float, required=True, help="mean arrival rate, jobs per second")
    parser.add_argument(
        "--burst", action="append", default=[], metavar="RATE:START:DURATION", help="another rate for a while"
    )
    parser.add_argument("--p99", type=float, help="p99 job latency goal in seconds: search the backlog target")
    parser.add_argument("--curve", help="seconds per batch by size, e.g. 1:0.01,32:0.08 (an input curve)")
    parser.add_argument("--max-batch-size", type=int, default=32, help="WorkerMaxBatchSize (default 32)")
    parser.add_argument("--max-tasks", type=int, default=4, help="WorkerMaxTasks to start from (default 4)")
    parser.add_argument("--target", type=float, default=200.0, help="WorkerTargetBacklogPerTask (default 200)")
    parser.add_argument("--idle-minutes", type=int, default=15, help="WorkerIdleMinutes (default 15)")
    parser.add_argument(
        "--task-start-seconds",
        type=float,
        default=240.0,
        help="request → serving for a new task: instance boot, image pull, model load (an input; default 240)",
    )
    parser.add_argument("--from-zero", action="store_true", help="start with no task (default: enough tasks running)")
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds (default 3600)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    return parser


def _load(args: argparse.Namespace) -> tuple[costmodel.Measured, costmodel.Prices]:
    return costmodel.Measured.load(args.measured), costmodel.Prices.load(args.prices)


def _fleet(args: argparse.Namespace, measured: costmodel.Measured) -> costmodel.Fleet:
    if args.images_per_second > 0:
        return costmodel.Fleet(args.instance, args.images_per_second, "input")
    return costmodel.Fleet(
        args.instance, measured.cpu_images_per_second, f"measured on CPU, not a GPU: {measured.cpu_description}"
    )


def cost_main(argv: Sequence[str] | None = None) -> int:
    args = cost_parser().parse_args(argv)
    try:
        measured, prices = _load(args)
        fleet = replace(_fleet(args, measured), overprovision=args.overprovision)
        traffic = costmodel.Traffic(
            image_bytes=int(args.image_kb * 1000), polls_per_job=args.polls, claim_check_share=args.claim_check_share
        )
        comparison = costmodel.compare(traffic, fleet, measured=measured, prices=prices)
    except (OSError, ValueError, KeyError) as exc:
        print(f"twopass cost: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(costmodel.markdown(comparison))
    return 0


def plan_main(argv: Sequence[str] | None = None) -> int:
    args = plan_parser().parse_args(argv)
    try:
        measured, prices = _load(args)
        fleet = _fleet(args, measured)
        if args.curve:
            curve = planner.ServiceCurve.parse(args.curve, "input")
        elif args.images_per_second > 0:
            curve = planner.ServiceCurve.from_throughput(args.images_per_second, args.max_batch_size, "input")
        else:
            curve = planner.parse_curve(measured.cpu_service_curve)
            curve = replace(curve, source=fleet.throughput_source)
        load = planner.Load(
            args.rate, duration=args.duration, bursts=tuple(map(planner.Burst.parse, args.burst)), seed=args.seed
        )
        worker = planner.Worker(args.max_batch_size, measured.worker_overhead_seconds)
        scaling = planner.Scaling(
            target_backlog_per_task=args.target,
            max_tasks=args.max_tasks,
            idle_minutes=args.idle_minutes,
            task_start_seconds=args.task_start_seconds,
            initial_tasks=0 if args.from_zero else None,
        )
        result = planner.plan(load, curve, worker, scaling, p99=args.p99)
        fleet = replace(fleet, images_per_second=curve.throughput(args.max_batch_size))
        report = planner_report(result, load, curve, fleet, measured, prices)
    except (OSError, ValueError, KeyError) as exc:
        print(f"twopass plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_plan(report))
    return 0 if result.meets_p99 is not False else 1


def planner_report(
    result: planner.Plan,
    load: planner.Load,
    curve: planner.ServiceCurve,
    fleet: costmodel.Fleet,
    measured: costmodel.Measured,
    prices: costmodel.Prices,
) -> dict[str, object]:
    """The plan with its costs: GPU per hour from the simulated instance-hours, the rest per image."""
    sim = result.result
    mean_rate = sim.arrived / sim.duration if sim.duration else 0.0
    busy_tasks = mean_rate / fleet.images_per_second if fleet.images_per_second else 0.0
    overprovision = sim.mean_tasks / busy_tasks if busy_tasks else 1.0
    comparison = costmodel.compare(
        costmodel.Traffic(), replace(fleet, overprovision=max(overprovision, 1e-9)), measured=measured, prices=prices
    )
    hourly = sim.mean_tasks * prices.instance(fleet.instance_type)
    per_task = curve.throughput(result.parameters["WorkerMaxBatchSize"])
    return {
        "throughput": {"images_per_second_per_task": round(per_task, 2), "source": curve.source},
        "load": {"rate": load.rate, "bursts": [b.__dict__ for b in load.bursts], "duration_s": load.duration},
        **result.to_dict(),
        "gpu_usd_per_hour": round(hourly, 3),
        "usd_per_million_images": round(comparison.twopass.total, 3) if sim.arrived else None,
        "mean_tasks_paid": round(sim.mean_tasks, 2),
        "tasks_busy": round(busy_tasks, 2),
    }


def format_plan(report: dict[str, object]) -> str:
    r: dict[str, object] = report
    res = r["result"]
    assert isinstance(res, dict)
    tp = r["throughput"]
    assert isinstance(tp, dict)
    params = r["parameters"]
    assert isinstance(params, dict)
    lines = [
        f"throughput per task: {tp['images_per_second_per_task']} images/s ({tp['source']})",
        f"tasks needed at the peak rate (80% busy): {r['tasks_needed']}",
        f"simulated: p50 {res['p50_s']} s, p99 {res['p99_s']} s; {res['completed']} of {res['arrived']} jobs done, "
        f"{res['final_queue']} still queued; mean batch {res['mean_batch']}",
        f"tasks paid on average: {r['mean_tasks_paid']} (busy: {r['tasks_busy']}), peak {res['peak_tasks']}",
        f"cost: GPU ${r['gpu_usd_per_hour']}/h; ${r['usd_per_million_images']} per million images, all components",
    ]
    if r.get("min_capacity_needed"):
        lines.append(
            f"needs {r['min_capacity_needed']} task(s) kept running (WorkerMinTasks, 0 by default): backlog "
            "tracking alone scales a steady load in below what it needs"
        )
    if r.get("meets_p99") is False:
        lines.append("p99 goal NOT met by any backlog target: raise WorkerMaxTasks or lower --task-start-seconds")
    lines.append("template parameters: " + " ".join(f"{k}={v}" for k, v in params.items()))
    return "\n".join(lines)
