"""The planner's simulation priced by the cost model: a fleet as a simulated load used it, and the plan
that ``twopass plan`` prints (tasks, latency, cost, template parameters, warnings).

Both sides are costed at the simulated utilisation and batch sizes. Standard library only.
"""

from __future__ import annotations

from dataclasses import replace

from twopass.tools import cost as costmodel
from twopass.tools import plan as planner

#: A p99 over this many seconds is flagged whatever the goal: jobs then wait for tasks to start.
SLOW_P99_SECONDS = 60.0


def simulated_fleet(fleet: costmodel.Fleet, sim: planner.Result) -> costmodel.Fleet:
    """``fleet`` as a simulated load used it: tasks paid per task busy, the batches they ran."""
    mean_rate = sim.arrived / sim.duration if sim.duration else 0.0
    busy_tasks = mean_rate / fleet.images_per_second if fleet.images_per_second else 0.0
    overprovision = sim.mean_tasks / busy_tasks if busy_tasks else 1.0
    return replace(
        fleet, overprovision=max(overprovision, 1e-9), mean_batch=round(sim.mean_batch, 2), tasks=sim.mean_tasks
    )


def planner_report(
    result: planner.Plan,
    load: planner.Load,
    curve: planner.ServiceCurve,
    fleet: costmodel.Fleet,
    measured: costmodel.Measured,
    prices: costmodel.Prices,
    *,
    p99_goal: float | None = None,
) -> dict[str, object]:
    """The plan with its costs, both sides at the simulated utilisation and batch sizes."""
    sim = result.result
    fleet = simulated_fleet(fleet, sim)
    mean_rate = sim.arrived / sim.duration if sim.duration else 0.0
    comparison = costmodel.compare(
        costmodel.Traffic(rate=mean_rate), fleet, measured=measured, prices=prices, stack=None
    )
    warnings = list(comparison.warnings)
    if sim.latencies and p99_goal is not None and sim.p99 > p99_goal:
        warnings.append(f"simulated p99 {sim.p99:.1f} s is over the goal of {p99_goal:g} s")
    if sim.latencies and sim.p99 > SLOW_P99_SECONDS:
        warnings.append(
            f"simulated p99 is {sim.p99:.0f} s, over a minute: jobs wait for tasks to start or scale out "
            "(a floor of tasks, WorkerMinTasks, or a lower backlog target shortens it)"
        )
    hourly = sim.mean_tasks * prices.instance(fleet.instance_type)
    per_task = curve.throughput(result.parameters["WorkerMaxBatchSize"])
    sagemaker = comparison.to_dict().get("sagemaker_async_with_fast_path_usd_per_million")
    sagemaker = round(float(sagemaker), 3) if isinstance(sagemaker, float) else None
    return {
        "throughput": {"images_per_second_per_task": round(per_task, 2), "source": curve.source},
        "load": {"rate": load.rate, "bursts": [b.__dict__ for b in load.bursts], "duration_s": load.duration},
        **result.to_dict(),
        "gpu_usd_per_hour": round(hourly, 3),
        "usd_per_million_images": round(comparison.twopass.total, 3) if sim.arrived else None,
        "sagemaker_async_usd_per_million_images": sagemaker if sim.arrived else None,
        "fixed_usd_per_month": round(comparison.monthly.total, 2) if comparison.monthly else None,
        "mean_tasks_paid": round(sim.mean_tasks, 2),
        "tasks_busy": round(sim.mean_tasks * fleet.utilisation, 2),
        "utilisation": round(fleet.utilisation, 4),
        "warnings": warnings,
    }
