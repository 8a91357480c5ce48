"""``twopass cost`` and ``twopass plan``: dollars per million images, and GPU tasks for a load.

Both read the figures ``make bench`` measured (``twopass/data/measured.json``), the committed price
table (``twopass/data/prices.json``) and the stack's standing parts (``twopass/data/stack.json``). A
GPU task's throughput was not measured on a GPU here: give ``--images-per-second`` or ``--curve``
(inputs); without them the CPU figures measured here stand in, and the output says so with a
warning (stderr, and ``"warnings"`` in the JSON). With ``--rate``, ``twopass cost`` takes the
utilisation and batch sizes from the planner's simulation of that load, as ``twopass plan`` does.

This module reads the arguments and prints; the models are :mod:`twopass.tools.cost`,
:mod:`twopass.tools.plan` and :mod:`twopass.tools.capacity`, imported when a command runs (standard
library only, like the rest of the CLI).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from twopass.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Command, Subparsers, runs

if TYPE_CHECKING:
    from twopass.tools import cost as costmodel
    from twopass.tools import plan as planner

COST_EPILOG = """\
examples:
  twopass cost --images-per-second 400                 # a g4dn.xlarge task at 400 images/s (your figure)
  twopass cost --images-per-second 900 --instance g5.xlarge --image-kb 120 --polls 0
  twopass cost --images-per-second 400 --rate 50      # utilisation and batches simulated at 50 jobs/s
  twopass cost --json | jq .twopass.total_usd_per_million
"""

PLAN_EPILOG = """\
examples:
  twopass plan --rate 50 --images-per-second 400 --p99 30
  twopass plan --rate 20 --burst 200:600:120 --images-per-second 400 --from-zero
  twopass plan --rate 5 --curve 1:0.04,8:0.2,32:0.75     # a measured batch-time curve
"""


def register(sub: Subparsers[argparse.ArgumentParser], common_options: argparse.ArgumentParser) -> None:
    cost = sub.add_parser(
        "cost",
        help="dollars per million images by AWS component, beside SageMaker async (`twopass cost --help`)",
        description="Dollars per million images: each AWS component from measured figures and list prices, "
        "beside SageMaker Asynchronous Inference on the equivalent instance.",
        epilog=COST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cost_arguments(cost)
    runs(cost, Command(run_cost, usage=cost))
    plan = sub.add_parser(
        "plan",
        help="GPU tasks, latency and template parameters for a load, by simulation (`twopass plan --help`)",
        description="Simulate arrivals, the queue, batching workers and the template's autoscaling; print the "
        "tasks a load needs, its p50/p99 job latency, the cost and the template parameters to set.",
        epilog=PLAN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _plan_arguments(plan)
    runs(plan, Command(run_plan, usage=plan))


def _fleet_arguments(parser: argparse.ArgumentParser) -> None:
    """What both commands take: the GPU task, its throughput, and the figures and prices to use."""
    parser.add_argument("--instance", default="g4dn.xlarge", help="GPU instance type (default g4dn.xlarge)")
    parser.add_argument(
        "--images-per-second",
        type=float,
        default=0.0,
        help="slow-model images/s one worker task sustains on that instance: an input unless you measured it "
        "(default: the CPU figure measured by make bench, which is not a GPU's)",
    )
    parser.add_argument("--curve", help="seconds per batch by size, e.g. 1:0.01,32:0.08 (a measured batch-time curve)")
    parser.add_argument(
        "--batch-overhead-ms",
        type=float,
        default=4.0,
        help="with --images-per-second: fixed milliseconds each batch costs on the GPU (launch, copies), so "
        "small batches serve fewer images/s than full ones (an estimate; default 4)",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, help="WorkerMaxBatchSize (default 32)")
    parser.add_argument(
        "--nat-gateways", type=int, default=0, help="NAT gateways (private subnets; default 0: public subnets)"
    )
    parser.add_argument("--measured", type=Path, help="measured figures (default: the committed measured.json)")
    parser.add_argument("--prices", type=Path, help="price table (default: the committed prices.json)")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _cost_arguments(parser: argparse.ArgumentParser) -> None:
    _fleet_arguments(parser)
    parser.add_argument("--image-kb", type=float, default=35.0, help="encoded image size in KB (default 35)")
    parser.add_argument("--polls", type=float, default=1.0, help="GET /job calls per job (default 1; 0 with callbacks)")
    parser.add_argument(
        "--claim-check-share", type=float, default=0.0, help="share of images over 256 KiB, sent via S3 (default 0)"
    )
    parser.add_argument(
        "--rate", type=float, help="mean arrival rate, jobs/s: utilisation and batch sizes from the planner"
    )
    parser.add_argument(
        "--overprovision",
        type=float,
        default=1.0,
        help="tasks paid per task kept busy, when --rate is not given (default 1: fully used, with a warning)",
    )


def _plan_arguments(parser: argparse.ArgumentParser) -> None:
    _fleet_arguments(parser)
    parser.add_argument("--rate", type=float, required=True, help="mean arrival rate, jobs per second")
    parser.add_argument(
        "--burst", action="append", default=[], metavar="RATE:START:DURATION", help="another rate for a while"
    )
    parser.add_argument("--p99", type=float, help="p99 job latency goal in seconds: search the backlog target")
    parser.add_argument("--max-tasks", type=int, default=4, help="WorkerMaxTasks to start from (default 4)")
    parser.add_argument("--target", type=float, default=200.0, help="WorkerTargetBacklogPerTask (default 200)")
    parser.add_argument("--idle-minutes", type=int, default=15, help="WorkerIdleMinutes (default 15)")
    parser.add_argument(
        "--task-start-seconds",
        type=float,
        default=240.0,
        help="request → serving for a new task: instance boot, image pull, model load (an input; default 240)",
    )
    parser.add_argument(
        "--task-restart-seconds",
        type=float,
        default=60.0,
        help="request → serving for a task on an instance still up (image cached): an input; default 60",
    )
    parser.add_argument("--from-zero", action="store_true", help="start with no task (default: enough tasks running)")
    parser.add_argument("--duration", type=float, default=3600.0, help="simulated seconds (default 3600)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")


# -- from the arguments to the models' inputs ---------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[costmodel.Measured, costmodel.Prices]:
    from twopass.tools import cost as costmodel

    return costmodel.Measured.load(args.measured), costmodel.Prices.load(args.prices)


def _fleet(args: argparse.Namespace, measured: costmodel.Measured) -> costmodel.Fleet:
    from twopass.tools import cost as costmodel

    if args.images_per_second > 0 or args.curve:
        return costmodel.Fleet(args.instance, args.images_per_second, "input", nat_gateways=args.nat_gateways)
    return costmodel.Fleet(
        args.instance,
        measured.cpu_images_per_second,
        f"measured on CPU, not a GPU: {measured.cpu_description}",
        nat_gateways=args.nat_gateways,
    )


def _curve(args: argparse.Namespace, measured: costmodel.Measured, fleet: costmodel.Fleet) -> planner.ServiceCurve:
    """The batch-time curve: given, or the GPU figure with a per-batch cost, or the CPU one measured here."""
    from twopass.tools import plan as planner

    if args.curve:
        return planner.ServiceCurve.parse(args.curve, "input: a batch-time curve")
    if args.images_per_second > 0:
        overhead = args.batch_overhead_ms / 1000
        source = (
            f"input: {args.images_per_second:g} images/s at batch {args.max_batch_size}, "
            f"{args.batch_overhead_ms:g} ms a batch"
        )
        return planner.ServiceCurve.with_batch_overhead(args.images_per_second, args.max_batch_size, overhead, source)
    return replace(planner.parse_curve(measured.cpu_service_curve), source=fleet.throughput_source)


def _warn(warnings: Sequence[str], command: str) -> None:
    for warning in warnings:
        print(f"twopass {command}: warning: {warning}", file=sys.stderr)


# -- twopass cost ---------------------------------------------------------------------------------------


def run_cost(args: argparse.Namespace) -> int:
    from twopass.tools import cost as costmodel

    try:
        comparison = _comparison(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"twopass cost: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _warn(comparison.warnings, "cost")
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2))
    else:
        print(costmodel.markdown(comparison))
    return EXIT_OK


def _comparison(args: argparse.Namespace) -> costmodel.Comparison:
    """twopass beside SageMaker async for the arguments' traffic and fleet (simulated with ``--rate``)."""
    from twopass.tools import cost as costmodel
    from twopass.tools import plan as planner
    from twopass.tools.capacity import simulated_fleet

    measured, prices = _load(args)
    fleet = replace(_fleet(args, measured), overprovision=args.overprovision)
    curve = _curve(args, measured, fleet)
    fleet = replace(fleet, images_per_second=curve.throughput(args.max_batch_size))
    traffic = costmodel.Traffic(
        image_bytes=int(args.image_kb * 1000),
        polls_per_job=args.polls,
        claim_check_share=args.claim_check_share,
        rate=args.rate,
    )
    if args.rate is not None:
        worker = planner.Worker(args.max_batch_size, measured.worker_overhead_seconds)
        sim = planner.simulate(planner.Load(args.rate), curve, worker, planner.Scaling())
        fleet = simulated_fleet(fleet, sim)
    return costmodel.compare(traffic, fleet, measured=measured, prices=prices, utilisation_known=args.rate is not None)


# -- twopass plan ---------------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> int:
    try:
        report = _plan_report(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"twopass plan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    warnings = report["warnings"]
    assert isinstance(warnings, list)
    _warn(warnings, "plan")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_plan(report))
    return EXIT_OK if report["meets_p99"] is not False else EXIT_FAILED


def _plan_report(args: argparse.Namespace) -> dict[str, object]:
    """The plan for the arguments' load, priced (:func:`twopass.tools.capacity.planner_report`)."""
    from twopass.tools import plan as planner
    from twopass.tools.capacity import planner_report

    measured, prices = _load(args)
    fleet = _fleet(args, measured)
    curve = _curve(args, measured, fleet)
    load = planner.Load(
        args.rate, duration=args.duration, bursts=tuple(map(planner.Burst.parse, args.burst)), seed=args.seed
    )
    worker = planner.Worker(args.max_batch_size, measured.worker_overhead_seconds)
    scaling = planner.Scaling(
        target_backlog_per_task=args.target,
        max_tasks=args.max_tasks,
        idle_minutes=args.idle_minutes,
        task_start_seconds=args.task_start_seconds,
        task_restart_seconds=args.task_restart_seconds,
        initial_tasks=0 if args.from_zero else None,
    )
    result = planner.plan(load, curve, worker, scaling, p99=args.p99)
    fleet = replace(fleet, images_per_second=curve.throughput(args.max_batch_size))
    return planner_report(result, load, curve, fleet, measured, prices, p99_goal=args.p99)


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
        f"tasks paid on average: {r['mean_tasks_paid']} (busy: {r['tasks_busy']}, utilisation "
        f"{float(str(r['utilisation'])):.0%}), peak {res['peak_tasks']} tasks on {res['peak_instances']} instances",
        f"cost: GPU ${r['gpu_usd_per_hour']}/h; ${r['usd_per_million_images']} per million images, all components; "
        "SageMaker async at the same utilisation with the same fast path: "
        f"${r['sagemaker_async_usd_per_million_images']}",
        f"per month whatever the load: ${r['fixed_usd_per_month']}",
    ]
    warnings = r["warnings"]
    assert isinstance(warnings, list)
    lines = [f"WARNING: {w}" for w in warnings] + lines
    if r.get("min_capacity_needed"):
        lines.append(
            f"needs {r['min_capacity_needed']} task(s) kept running (WorkerMinTasks, 0 by default): backlog "
            "tracking alone scales a steady load in below what it needs"
        )
    if r.get("meets_p99") is False:
        lines.append("p99 goal NOT met by any backlog target: raise WorkerMaxTasks or lower --task-start-seconds")
    lines.append("template parameters: " + " ".join(f"{k}={v}" for k, v in params.items()))
    return "\n".join(lines)
