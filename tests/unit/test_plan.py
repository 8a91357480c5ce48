"""The capacity planner's mechanics: deterministic runs, bounded and growing queues, scaling delays."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from twopass.tools.plan import Burst, Load, Scaling, ServiceCurve, Worker, plan, simulate, steady_tasks

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
#: About 40 images/s per task at batch 32, 28/s one at a time.
CURVE = ServiceCurve(((1, 0.036), (8, 0.2), (32, 0.8)), "test")
WORKER = Worker(max_batch_size=32, overhead_seconds=0.02)
ONE_TASK = Scaling(initial_tasks=1, fixed=True)


def test_service_curve_interpolates_and_extrapolates_per_image() -> None:
    assert CURVE.seconds(1) == pytest.approx(0.036)
    assert CURVE.seconds(20) == pytest.approx(0.2 + 0.6 * 12 / 24)
    assert CURVE.seconds(64) == pytest.approx(1.6)  # beyond the last point: its time per image
    assert CURVE.throughput(32) == pytest.approx(40.0)
    flat = ServiceCurve.from_throughput(500, batch=32)
    assert flat.throughput(1) == pytest.approx(500) and flat.throughput(32) == pytest.approx(500)
    assert ServiceCurve.parse("8:0.2,1:0.036").points == ((1, 0.036), (8, 0.2))
    with pytest.raises(ValueError):
        ServiceCurve.parse("one:two")
    with pytest.raises(ValueError):
        Burst.parse("10:5")


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    load = Load(20, duration=300, seed=7)
    a, b = simulate(load, CURVE, WORKER, ONE_TASK), simulate(load, CURVE, WORKER, ONE_TASK)
    assert a.latencies == b.latencies and a.arrived == b.arrived
    c = simulate(replace(load, seed=8), CURVE, WORKER, ONE_TASK)
    assert c.latencies != a.latencies


def test_under_capacity_the_queue_stays_bounded() -> None:
    short = simulate(Load(20, duration=300, seed=1), CURVE, WORKER, ONE_TASK)
    long = simulate(Load(20, duration=1200, seed=1), CURVE, WORKER, ONE_TASK)
    for run in (short, long):
        assert run.final_queue < 40 and run.completed >= run.arrived - 40
        assert run.p99 < 2.0, run.to_dict()
    # Four times as long, no longer queue: it does not grow with time.
    assert long.max_queue <= 2 * short.max_queue + 20
    assert 1 < long.mean_batch < 32  # batches form under load, not full ones


def test_over_capacity_the_queue_grows_with_time() -> None:
    rate = 60.0  # against 40 images/s at the largest batch
    runs = [simulate(Load(rate, duration=d, seed=1), CURVE, WORKER, ONE_TASK) for d in (300, 600)]
    assert runs[1].final_queue > 1.8 * runs[0].final_queue
    # It grows by what arrives beyond the capacity: 20 jobs a second.
    assert runs[1].final_queue == pytest.approx(600 * (rate - CURVE.throughput(32)), rel=0.1)
    assert runs[1].mean_batch > 31  # the worker runs full batches back to back
    assert runs[1].p99 > runs[0].p99


def test_scale_from_zero_delay_shows_in_the_first_jobs_latency() -> None:
    scaling = Scaling(initial_tasks=0, task_start_seconds=120, metric_period=60, metric_delay=60, max_tasks=2)
    run = simulate(Load(2, duration=900, seed=3), CURVE, WORKER, scaling)
    # The alarm sees the backlog a period late, then the task takes 120 s to serve.
    assert min(run.first_latencies[:5]) > 120
    assert run.first_latencies[0] > 120 + 60
    assert run.p50 < 1.0  # once up, a lone task keeps up with 2 jobs/s
    assert run.timeline[0][3] == 0 and max(desired for *_, desired in run.timeline) >= 1


def test_a_warm_start_has_no_such_delay() -> None:
    run = simulate(Load(2, duration=300, seed=3), CURVE, WORKER, Scaling(initial_tasks=1))
    assert max(run.first_latencies) < 1.0


def test_burst_scales_out_then_back_in_and_to_zero() -> None:
    scaling = Scaling(initial_tasks=1, max_tasks=6, target_backlog_per_task=100, task_start_seconds=60, idle_minutes=5)
    load = Load(5, duration=3600, bursts=(Burst(start=300, duration=600, rate=150),), seed=2)
    # Traffic stops at 1800 s: the service goes back to zero after the idle minutes.
    load = replace(load, bursts=(*load.bursts, Burst(start=1800, duration=1800, rate=0)))
    run = simulate(load, CURVE, WORKER, scaling)
    desired = [d for *_, d in run.timeline]
    assert max(desired) > 1, "the burst scaled out"
    assert max(desired) <= 6, "never beyond WorkerMaxTasks"
    assert desired[-1] == 0, "idle for WorkerIdleMinutes: scaled to zero"
    assert run.final_queue == 0
    # Paid instance time covers the start-up and the linger, more than the tasks' serving time alone.
    assert run.instance_seconds > 0


def test_steady_tasks_and_plan_parameters_name_the_template_parameters() -> None:
    assert steady_tasks(100, CURVE, WORKER) == 4  # 100 / (40 × 0.8) = 3.1
    result = plan(Load(10, duration=1200, seed=1), CURVE, WORKER, Scaling(), p99=60)
    assert result.tasks_needed == 1 and result.meets_p99 and result.floor == 0
    names = set(re.findall(r"^  (Worker\w+):", TEMPLATE.read_text(), re.MULTILINE))
    assert set(result.parameters) <= names, set(result.parameters) - names
    assert result.parameters["WorkerMaxBatchSize"] == 32


def test_a_steady_load_needs_a_floor_under_backlog_tracking() -> None:
    """Tasks that keep up leave nothing visible: target tracking scales in until they no longer do."""
    slow = ServiceCurve.from_throughput(5, 32)  # 10 jobs/s need 3 tasks at 80 %
    scaling = Scaling(max_tasks=3, task_start_seconds=120)
    load = Load(10, duration=2700, seed=5)
    bare = simulate(load, slow, WORKER, scaling)
    assert bare.p99 > 60, "without a floor the steady load swings into long waits"
    assert min(desired for *_, desired in bare.timeline) < 3
    result = plan(load, slow, WORKER, scaling, p99=30)
    assert result.floor == 3 and result.meets_p99
    assert result.result.p99 < 30 and result.to_dict()["min_capacity_needed"] == 3
    assert result.parameters["WorkerMinTasks"] == 3  # the template parameter that sets the floor


def test_spread_in_service_times_widens_the_tail_not_the_arrivals() -> None:
    load = Load(2, duration=600, seed=4)
    steady = simulate(load, CURVE, WORKER, ONE_TASK)
    noisy = simulate(load, CURVE, replace(WORKER, cv=1.0), ONE_TASK)
    assert steady.arrived == noisy.arrived  # the same arrivals: the noise has its own generator
    assert noisy.p99 > 1.5 * steady.p99
    assert noisy.p50 == pytest.approx(steady.p50, rel=0.3)


def test_measured_overheads_carry_their_tail_into_the_latencies() -> None:
    """Overheads drawn from measured samples: a rare slow write shows in p99, not in p50."""
    load = Load(2, duration=600, seed=3)
    samples = (0.01,) * 95 + (1.0,) * 5  # one job in twenty meets a slow table
    sampled = simulate(load, CURVE, replace(WORKER, overhead_samples=samples), ONE_TASK)
    fixed = simulate(load, CURVE, replace(WORKER, overhead_seconds=0.01), ONE_TASK)
    assert sampled.p50 == pytest.approx(fixed.p50, rel=0.2)
    assert sampled.p99 > fixed.p99 + 0.9
    assert min(sampled.latencies) >= 0.01 + CURVE.seconds(1) - 1e-9


def test_a_gpu_curve_makes_small_batches_less_efficient_than_full_ones() -> None:
    gpu = ServiceCurve.with_batch_overhead(400, batch=32, overhead_seconds=0.004)
    assert gpu.throughput(32) == pytest.approx(400)
    assert gpu.seconds(1) == pytest.approx(0.004 + (0.08 - 0.004) / 32)
    assert gpu.throughput(1) < 0.5 * gpu.throughput(32)
    # The fixed part never exceeds half a full batch's time, whatever was asked.
    assert ServiceCurve.with_batch_overhead(10_000, 32, 1.0).seconds(1) < ServiceCurve.from_throughput(10_000).seconds(
        32
    )


def test_a_steady_trickle_is_never_scaled_to_zero() -> None:
    """20 jobs/s on a 400 images/s task keeps the queue empty, but every minute some job is in flight
    (deletes wait up to 2 s): the template's alarm never sees an idle minute, nor does the planner."""
    curve = ServiceCurve.with_batch_overhead(400, 32)
    run = simulate(Load(20, duration=3600, seed=1), curve, WORKER, Scaling())
    assert min(desired for *_, desired in run.timeline) >= 1
    assert run.p99 < 1.0
    # Lone jobs every few minutes do leave idle minutes: those still scale to zero.
    sparse = simulate(Load(1 / 300, duration=3 * 3600, seed=1), curve, WORKER, Scaling(idle_minutes=15))
    assert 0 in [desired for *_, desired in sparse.timeline]


def test_paid_instances_never_exceed_what_can_exist_and_lingering_ones_are_reused() -> None:
    """A task asked for while a stopped task's instance lingers takes that instance (no second bill,
    no full start); no more instances than WorkerMaxTasks are ever up."""
    curve = ServiceCurve.with_batch_overhead(400, 32)
    scaling = Scaling(max_tasks=2, idle_minutes=5, task_start_seconds=240, task_restart_seconds=60)
    # Work, 10 minutes of nothing (scale to zero at 5), then work again inside the 15-minute linger.
    load = Load(2, duration=3600, bursts=(Burst(start=600, duration=600, rate=0),), seed=3)
    run = simulate(load, curve, WORKER, scaling)
    desired = [d for *_, d in run.timeline]
    assert 0 in desired and desired[-1] >= 1, "scaled to zero in the gap, and back"
    assert run.peak_instances <= scaling.max_tasks
    assert run.mean_tasks <= run.peak_instances
    # The instance was reused: paid the whole hour once (no second instance's start), and the jobs
    # after the gap waited for a restart, not a boot.
    assert run.instance_seconds == pytest.approx(3600, rel=0.01)
    assert run.p99 < 240


def test_plan_warns_when_p99_is_minutes(capsys: pytest.CaptureFixture[str]) -> None:
    from twopass.cli import main as cli

    args = ["plan", "--rate", "5", "--images-per-second", "400", "--from-zero", "--duration", "900", "--json"]
    assert cli(args) == 0
    import json

    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["result"]["p99_s"] > 60
    assert any("over a minute" in w for w in report["warnings"]) and "over a minute" in captured.err
    assert report["utilisation"] < 0.1 and report["sagemaker_async_usd_per_million_images"] > 0
    assert report["fixed_usd_per_month"] > 0
