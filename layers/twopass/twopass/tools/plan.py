"""Capacity planner: a discrete-event simulation of arrivals, the queue, batching workers and the
template's autoscaling, to say how many GPU tasks a load needs and what latency it then sees.

What is simulated, and how it maps onto ``template.yaml``:

* **Arrivals**: Poisson at ``rate`` jobs/s, with optional bursts (another rate for a while).
* **Queue**: one FIFO of waiting jobs (SQS standard is close enough to FIFO at these depths).
* **Workers**: each running task takes every waiting job up to ``max_batch_size`` as soon as it is
  free (the worker closes a batch at once when the queue is drained and the model idle), and is busy
  for ``curve.seconds(batch)``. A job's latency is its wait plus its batch's service time plus a fixed
  ``overhead_seconds`` (receive, decode ahead of the batch, result write).
* **Autoscaling**, evaluated every ``metric_period`` on metrics ``metric_delay`` old, as the template's
  three policies do: target tracking on visible messages per running task (``WorkerTargetBacklogPerTask``;
  out after 3 breaching minutes, ``ScaleOutCooldown`` 60 s; in after 15 minutes under 90 % of the
  target, ``ScaleInCooldown`` 300 s, never below one task); scale from zero to
  ``WorkerScaleFromZeroTasks`` when jobs are visible and no task is desired; scale to zero after
  ``WorkerIdleMinutes`` with nothing visible or in flight; never more than ``WorkerMaxTasks``.
* **A new task** serves ``task_start_seconds`` after it is asked for (GPU instance boot, image pull,
  model load: an input, it is not measured here); its instance is paid from that request until
  ``instance_linger_seconds`` after the task stops (the capacity provider scales instances in late).

Standard library only, deterministic for a given ``seed``.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ServiceCurve:
    """Seconds one task takes for a batch, by batch size (linear between the measured points)."""

    points: tuple[tuple[int, float], ...]
    #: Where the figures come from ("measured on …" or "input: …"); printed beside every result.
    source: str = "input"

    def __post_init__(self) -> None:
        if not self.points or any(b < 1 or s <= 0 for b, s in self.points):
            raise ValueError("a service curve needs batch sizes ≥ 1 and positive seconds")
        object.__setattr__(self, "points", tuple(sorted(self.points)))

    @classmethod
    def from_throughput(cls, images_per_second: float, batch: int = 32, source: str = "input") -> ServiceCurve:
        """A flat curve: every batch size runs at ``images_per_second`` (what an input figure gives)."""
        if images_per_second <= 0:
            raise ValueError("images per second must be positive")
        return cls(((1, 1 / images_per_second), (batch, batch / images_per_second)), source)

    @classmethod
    def with_batch_overhead(
        cls, images_per_second: float, batch: int = 32, overhead_seconds: float = 0.004, source: str = "input"
    ) -> ServiceCurve:
        """``images_per_second`` at full batches of ``batch``, each batch also paying ``overhead_seconds``
        (a GPU's launch and copy costs): a batch of 1 is far less efficient than a full one."""
        if images_per_second <= 0:
            raise ValueError("images per second must be positive")
        full = batch / images_per_second
        fixed = min(overhead_seconds, 0.5 * full)  # never more than half a full batch's time
        per_image = (full - fixed) / batch
        return cls(((1, fixed + per_image), (batch, full)), source)

    @classmethod
    def parse(cls, text: str, source: str = "input") -> ServiceCurve:
        """``"1:0.036,8:0.21,32:0.8"``: batch size and seconds per batch, comma-separated."""
        try:
            pairs = [item.split(":") for item in text.split(",") if item.strip()]
            return cls(tuple((int(b), float(s)) for b, s in pairs), source)
        except ValueError as exc:
            raise ValueError(f"not a service curve (batch:seconds,...): {text!r}") from exc

    def seconds(self, batch: int) -> float:
        sizes = [b for b, _ in self.points]
        if batch <= sizes[0]:
            b0, s0 = self.points[0]
            return s0 * batch / b0
        if batch >= sizes[-1]:
            # Beyond the largest measured batch: the same time per image as there.
            b1, s1 = self.points[-1]
            return s1 * batch / b1
        i = bisect.bisect_left(sizes, batch)
        (b0, s0), (b1, s1) = self.points[i - 1], self.points[i]
        return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)

    def throughput(self, batch: int) -> float:
        """Images per second of one task running batches of ``batch`` back to back."""
        return batch / self.seconds(batch)


@dataclass(frozen=True)
class Scaling:
    """The template's worker scaling (parameter names in the comments), plus what AWS adds."""

    target_backlog_per_task: float = 200.0  # WorkerTargetBacklogPerTask
    max_tasks: int = 4  # WorkerMaxTasks
    scale_from_zero_tasks: int = 1  # WorkerScaleFromZeroTasks
    idle_minutes: int = 15  # WorkerIdleMinutes
    scale_out_cooldown: float = 60.0
    scale_in_cooldown: float = 300.0
    #: CloudWatch's period for the SQS and ECS metrics, and how stale they are when an alarm reads them.
    metric_period: float = 60.0
    metric_delay: float = 60.0
    #: Target tracking's alarms: out after 3 breaching datapoints, in after 15 under 90 % of the target.
    out_datapoints: int = 3
    in_datapoints: int = 15
    #: Request → serving: GPU instance boot, worker image pull, model load (an input, not measured here).
    task_start_seconds: float = 240.0
    #: A stopped task's instance is paid until the capacity provider terminates it.
    instance_linger_seconds: float = 900.0
    #: Request → serving for a task placed on an instance still lingering (booted, image cached):
    #: placement and model load only (an input).
    task_restart_seconds: float = 60.0
    #: A job stays in flight until its delete, which the worker holds up to 2 s for company: the
    #: scale-to-zero alarm's in-flight count sees it that long after its batch.
    delete_linger_seconds: float = 2.0
    #: Tasks running (ready) when the simulation starts; ``None``: enough for ``rate`` (a warm service).
    initial_tasks: int | None = None
    #: Switch autoscaling off: ``initial_tasks`` for the whole run (the validation against a fixed stack).
    fixed: bool = False
    #: WorkerMinTasks (the scalable target's MinCapacity): 0 scales to zero; a floor keeps a steady
    #: load from being scaled in below what it needs (see :func:`plan`).
    min_tasks: int = 0


@dataclass(frozen=True)
class Worker:
    """One task's batching, as ``twopass.worker.pipeline`` does it.

    The batch behind the one on the model is formed ``form_lead_seconds`` before that one ends (at
    most ``depth`` batches: one running, one behind it). A batch formed while the model is idle and
    the queue drained closes at once; otherwise it stays open ``max_wait_seconds`` for more jobs (or
    until it is full, or the model goes idle). So jobs that arrive in the last moments of a batch wait
    for the one after next, and under a moderate load batches stay smaller than the queue would allow.
    """

    max_batch_size: int = 32  # WorkerMaxBatchSize
    #: Receive + result write around each job, not overlapped with the model (measured locally).
    overhead_seconds: float = 0.02
    #: Measured overheads to draw each job's from, when given (their tail is the queue's and the
    #: table's, heavier than the log-normal spread below); ``overhead_seconds`` and ``cv`` otherwise.
    overhead_samples: tuple[float, ...] = ()
    #: Spread of a batch's time and a job's overhead around the curve (coefficient of variation of a
    #: log-normal factor with mean 1): 0 makes every batch of a size take exactly the same time.
    cv: float = 0.0
    max_wait_seconds: float = 0.01  # WorkerMaxWaitMs
    #: The pipeline's model slots: the batch running and the one formed behind it.
    depth: int = 2
    #: How long before the running batch ends the next one is formed (the worker's FORM_LEAD_SECONDS).
    form_lead_seconds: float = 0.1

    def overhead(self, rng: random.Random) -> float:
        """One job's overhead: drawn from the samples, else the fixed figure with the spread."""
        if self.overhead_samples:
            return rng.choice(self.overhead_samples)
        return self.overhead_seconds * self.factor(rng)

    def factor(self, rng: random.Random) -> float:
        if self.cv <= 0:
            return 1.0
        sigma = math.sqrt(math.log(1 + self.cv**2))
        return rng.lognormvariate(-(sigma**2) / 2, sigma)


@dataclass(frozen=True)
class Burst:
    start: float
    duration: float
    rate: float

    @classmethod
    def parse(cls, text: str) -> Burst:
        """``RATE:START:DURATION`` (jobs/s from START for DURATION seconds)."""
        try:
            rate, start, duration = (float(x) for x in text.split(":"))
        except ValueError as exc:
            raise ValueError(f"a burst is RATE:START:DURATION, got {text!r}") from exc
        if rate < 0 or start < 0 or duration <= 0:
            raise ValueError(f"a burst needs rate ≥ 0, start ≥ 0 and duration > 0: {text!r}")
        return cls(start, duration, rate)


@dataclass(frozen=True)
class Load:
    rate: float
    duration: float = 3600.0
    bursts: tuple[Burst, ...] = ()
    seed: int = 1
    #: Latencies of jobs that arrived before this many seconds are left out of the percentiles
    #: (a warm start's first minutes), unless the run starts from zero on purpose.
    warmup: float = 0.0

    def rate_at(self, t: float) -> float:
        for burst in self.bursts:
            if burst.start <= t < burst.start + burst.duration:
                return burst.rate
        return self.rate

    def arrivals(self) -> Iterator[float]:
        """Poisson arrival times; a rate change takes effect at its boundary (thinning by segments)."""
        rng = random.Random(self.seed)
        bounds = {0.0, self.duration, *(b.start for b in self.bursts), *(b.start + b.duration for b in self.bursts)}
        edges = sorted(e for e in bounds if e <= self.duration)
        for lo, hi in itertools.pairwise(edges):
            rate = self.rate_at(lo)
            if rate <= 0:
                continue
            t = lo + rng.expovariate(rate)
            while t < hi:
                yield t
                t += rng.expovariate(rate)


@dataclass
class _Instance:
    """A GPU instance: paid from its request until ``linger`` after its last task left it."""

    requested_at: float
    released_at: float | None = None

    def free(self, now: float, linger: float) -> bool:
        """Up with no task on it, and not yet terminated by the capacity provider."""
        return self.released_at is not None and now < self.released_at + linger

    def paid(self, end: float, linger: float) -> float:
        stopped = end if self.released_at is None else min(end, self.released_at + linger)
        return max(0.0, stopped - self.requested_at)


@dataclass
class _Task:
    ready_at: float
    requested_at: float
    instance: _Instance = field(default_factory=lambda: _Instance(0.0))
    last_done: float = -math.inf
    busy_until: float = 0.0
    stop: bool = False
    stopped_at: float | None = None
    #: Batches closed and waiting for the model, and the one being formed (its jobs' arrival times).
    formed: deque[list[float]] = field(default_factory=deque)
    open: list[float] | None = None
    open_until: float = 0.0

    @property
    def live(self) -> bool:
        """Neither stopped nor told to stop."""
        return self.stopped_at is None and not self.stop

    def serving(self, now: float) -> bool:
        return self.live and self.ready_at <= now

    def running(self, now: float) -> bool:
        return self.busy_until > now

    def committed(self, now: float) -> int:
        """Batches on the model, waiting for it, or being formed."""
        return int(self.running(now)) + len(self.formed) + int(self.open is not None)

    def retire(self, waiting: deque[float], now: float) -> None:
        """Told to stop: jobs not started go back to the queue (released); an idle task stops at once."""
        self.stop = True
        if self.open is not None:
            waiting.extendleft(reversed(self.open))
            self.open = None
        if not self.running(now):
            while self.formed:
                waiting.extendleft(reversed(self.formed.pop()))
            self.halt(now)

    def halt(self, now: float) -> None:
        """Stopped: its instance is free for another task until the capacity provider ends it."""
        self.stopped_at = now
        self.instance.released_at = now

    def in_flight(self, now: float, delete_linger: float) -> bool:
        """Messages of this task still not deleted: batches on hand, or deletes held after the last one."""
        return self.committed(now) > 0 or now < self.last_done + delete_linger


@dataclass
class Result:
    """What one simulation run saw."""

    latencies: list[float]
    completed: int
    arrived: int
    #: Waiting jobs at the end: a load over capacity leaves a growing queue.
    final_queue: int
    max_queue: int
    #: (time, waiting jobs, tasks serving, tasks asked for) at every metric period.
    timeline: list[tuple[float, int, int, int]]
    #: Instance-seconds paid (request to the last task's stop plus linger), over the run.
    instance_seconds: float
    duration: float
    batches: int
    mean_batch: float
    first_latencies: list[float] = field(default_factory=list)
    #: Instances up at once, at most (tasks on them, or lingering without one).
    peak_instances: int = 0

    def percentile(self, q: float) -> float:
        return percentile(self.latencies, q)

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    @property
    def mean_tasks(self) -> float:
        """Instances paid for on average (instance-hours per hour)."""
        return self.instance_seconds / self.duration

    @property
    def peak_tasks(self) -> int:
        return max((asked for _, _, _, asked in self.timeline), default=0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "p50_s": round(self.p50, 4) if self.latencies else None,
            "p99_s": round(self.p99, 4) if self.latencies else None,
            "completed": self.completed,
            "arrived": self.arrived,
            "final_queue": self.final_queue,
            "max_queue": self.max_queue,
            "mean_tasks": round(self.mean_tasks, 3),
            "peak_tasks": self.peak_tasks,
            "peak_instances": self.peak_instances,
            "batches": self.batches,
            "mean_batch": round(self.mean_batch, 2),
        }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in 0…100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def steady_tasks(rate: float, curve: ServiceCurve, worker: Worker, utilisation: float = 0.8) -> int:
    """Tasks that serve ``rate`` with full batches at ``utilisation`` of their throughput (at least 1)."""
    per_task = curve.throughput(worker.max_batch_size)
    return max(1, math.ceil(rate / (per_task * utilisation)))


def simulate(load: Load, curve: ServiceCurve, worker: Worker, scaling: Scaling) -> Result:
    """Run the simulation; deterministic for ``load.seed``."""
    initial = scaling.initial_tasks
    if initial is None:
        initial = min(scaling.max_tasks, steady_tasks(load.rate, curve, worker)) if load.rate > 0 else 0
    return _Simulation(load, curve, worker, scaling, initial).run()


class _Simulation:
    """The event loop of :func:`simulate` and its state."""

    def __init__(self, load: Load, curve: ServiceCurve, worker: Worker, scaling: Scaling, initial: int) -> None:
        self.load, self.curve, self.worker, self.scaling = load, curve, worker, scaling
        self.tasks: list[_Task] = [_Task(ready_at=0.0, requested_at=0.0) for _ in range(initial)]
        self.instances: list[_Instance] = [t.instance for t in self.tasks]
        self.peak_instances = len(self.instances)
        self.waiting: deque[float] = deque()
        self.latencies: list[float] = []
        self.first: list[float] = []
        # (time, order, kind, task index): "done" ends a batch, "close" ends a batch's forming window,
        # "ready" brings a new task into service.
        self.events: list[tuple[float, int, str, int]] = []
        self.order = self.batches = self.batched = self.completed = self.max_queue = self.arrived = 0
        self.timeline: list[tuple[float, int, int, int]] = []
        self.samples: list[tuple[float, int, int]] = []  # (time, visible, serving): the metrics, read late
        self.state = _ScalerState(desired=initial)
        self.noise = random.Random(load.seed + 7919)  # apart from the arrivals': the same arrivals for any cv

    def push(self, at: float, kind: str, i: int) -> None:
        self.order += 1
        heapq.heappush(self.events, (at, self.order, kind, i))

    # -- one task's pipeline -------------------------------------------------------------------

    def start(self, i: int, batch: list[float], now: float) -> None:
        task = self.tasks[i]
        size = len(batch)
        done = now + self.curve.seconds(size) * self.worker.factor(self.noise)
        task.busy_until = done
        task.last_done = max(task.last_done, done)
        self.batches += 1
        self.batched += size
        if done <= self.load.duration:
            self.completed += size
        for arrived_at in batch:
            latency = done + self.worker.overhead(self.noise) - arrived_at
            if arrived_at >= self.load.warmup:
                self.latencies.append(latency)
            if len(self.first) < 20:
                self.first.append(latency)
        self.push(done, "done", i)
        self.push(max(now, done - self.worker.form_lead_seconds), "lead", i)

    def forming(self, task: _Task, now: float) -> bool:
        """Whether the task's batcher forms a batch now: its model idle, or about to be."""
        return task.busy_until - self.worker.form_lead_seconds <= now

    def close(self, i: int, now: float) -> None:
        """The forming batch closes: onto the model if it is idle, else behind it."""
        task = self.tasks[i]
        if task.open is None:
            return
        batch, task.open = task.open, None
        if task.running(now) or task.formed:
            task.formed.append(batch)
        else:
            self.start(i, batch, now)

    def form(self, i: int, now: float) -> None:
        """Form batches from the waiting jobs while task ``i``'s pipeline has room."""
        task = self.tasks[i]
        limit = self.worker.max_batch_size
        while (
            self.waiting
            and task.open is None
            and task.committed(now) < self.worker.depth
            and self.forming(task, now)
            and task.serving(now)
        ):
            batch = [self.waiting.popleft() for _ in range(min(limit, len(self.waiting)))]
            idle = not task.running(now) and not task.formed
            if idle and (not self.waiting or len(batch) == limit):
                self.start(i, batch, now)  # drained and the model idle (or full): at once
            elif len(batch) == limit:
                task.formed.append(batch)
            else:
                task.open, task.open_until = batch, now + self.worker.max_wait_seconds
                self.push(task.open_until, "close", i)

    def arrive(self, now: float) -> bool:
        """A job arrives: into a batch being formed, else the queue and the least busy task's pipeline.

        ``False`` when no task had room for it (until the next event, later arrivals only queue).
        """
        for i, task in enumerate(self.tasks):
            if task.open is not None and task.live:
                task.open.append(now)
                if len(task.open) >= self.worker.max_batch_size:
                    self.close(i, now)
                    self.form(i, now)
                return True
        self.waiting.append(now)
        best, least = -1, self.worker.depth
        for i, task in enumerate(self.tasks):
            if task.serving(now) and self.forming(task, now):
                committed = int(task.busy_until > now) + len(task.formed)
                if committed < least:
                    best, least = i, committed
                    if not committed:
                        break  # an idle task starts it at once
        if best < 0:
            return False
        self.form(best, now)
        return True

    def finished(self, i: int, now: float) -> None:
        task = self.tasks[i]
        if task.stop:
            if not task.formed and task.open is None:
                task.halt(now)
            elif task.formed:
                self.start(i, task.formed.popleft(), now)
            return
        if task.formed:
            self.start(i, task.formed.popleft(), now)
        elif task.open is not None:
            self.close(i, now)  # the model went idle: the forming batch closes at once
        self.form(i, now)

    # -- scaling ---------------------------------------------------------------------------------

    def rescale(self, now: float) -> None:
        live = [i for i, t in enumerate(self.tasks) if t.live]
        desired = self.state.desired
        if desired > len(live):
            for _ in range(desired - len(live)):
                self.place(now)
        elif desired < len(live):
            # Idle tasks go first, then those still starting, then busy ones (after their batches).
            ranked = sorted(live, key=lambda i: (self.tasks[i].committed(now) > 0, self.tasks[i].ready_at <= now))
            for i in ranked[: len(live) - desired]:
                self.tasks[i].retire(self.waiting, now)

    def place(self, now: float) -> None:
        """A new task: on an instance still lingering when there is one (the capacity provider reuses
        it: no boot, the image cached), else on a new instance (the full start)."""
        linger = self.scaling.instance_linger_seconds
        spare = next((x for x in self.instances if x.free(now, linger)), None)
        if spare is not None:
            spare.released_at = None
            ready = now + min(self.scaling.task_restart_seconds, self.scaling.task_start_seconds)
        else:
            spare = _Instance(requested_at=now)
            self.instances.append(spare)
            ready = now + self.scaling.task_start_seconds
        self.tasks.append(_Task(ready_at=ready, requested_at=now, instance=spare))
        self.push(ready, "ready", len(self.tasks) - 1)
        up = sum(1 for x in self.instances if x.released_at is None or x.free(now, linger))
        self.peak_instances = max(self.peak_instances, up)

    def tick(self, now: float) -> None:
        up = sum(1 for t in self.tasks if t.serving(now))
        self.samples.append((now, len(self.waiting), up))
        linger = self.scaling.delete_linger_seconds
        busy = sum(1 for t in self.tasks if t.stopped_at is None and t.in_flight(now, linger))
        if not self.scaling.fixed:
            _autoscale(now, self.samples, busy, self.scaling, self.state)
            self.rescale(now)
        self.timeline.append((now, len(self.waiting), up, self.state.desired))

    # -- the loop ----------------------------------------------------------------------------------

    def event(self, kind: str, i: int, now: float) -> None:
        task = self.tasks[i]
        if kind == "done":
            self.finished(i, now)
        elif kind == "close":
            if task.open is not None and task.open_until <= now:
                self.close(i, now)
                self.form(i, now)
        elif not task.stop:  # "lead" or "ready": the task's batcher may form now
            self.form(i, now)

    def run(self) -> Result:
        load, period = self.load, self.scaling.metric_period
        next_tick = period
        arrivals = load.arrivals()
        next_arrival = next(arrivals, math.inf)
        while True:
            next_event = self.events[0][0] if self.events else math.inf
            now = min(next_arrival, next_event, next_tick)
            if now > load.duration:
                break
            if now == next_arrival:
                self.arrived += 1
                next_arrival = next(arrivals, math.inf)
                if not self.arrive(now):
                    # No task can take a job before the next event: queue the arrivals until then at once.
                    horizon = min(next_event, next_tick, load.duration)
                    while next_arrival <= horizon:
                        self.waiting.append(next_arrival)
                        self.arrived += 1
                        next_arrival = next(arrivals, math.inf)
                self.max_queue = max(self.max_queue, len(self.waiting))
            elif now == next_event:
                _, _, kind, i = heapq.heappop(self.events)
                self.event(kind, i, now)
            else:
                next_tick += period
                self.tick(now)
        return _result(self)


def _result(sim: _Simulation) -> Result:
    end = sim.load.duration
    return Result(
        latencies=sim.latencies,
        completed=sim.completed,
        arrived=sim.arrived,
        final_queue=len(sim.waiting) + sum(len(b) for t in sim.tasks for b in t.formed),
        max_queue=sim.max_queue,
        timeline=sim.timeline,
        instance_seconds=sum(x.paid(end, sim.scaling.instance_linger_seconds) for x in sim.instances),
        duration=end,
        batches=sim.batches,
        mean_batch=sim.batched / sim.batches if sim.batches else 0.0,
        first_latencies=sim.first,
        peak_instances=sim.peak_instances,
    )


@dataclass
class _ScalerState:
    desired: int
    last_out: float = -math.inf
    last_in: float = -math.inf
    last_zero: float = -math.inf
    high: int = 0
    low: int = 0
    idle: int = 0


def _autoscale(now: float, samples: list[tuple[float, int, int]], busy: int, s: Scaling, st: _ScalerState) -> None:
    """One evaluation of the template's three policies on metrics ``metric_delay`` old."""
    seen = [x for x in samples if x[0] <= now - s.metric_delay + 1e-9]
    if not seen:
        return
    _, visible, running = seen[-1]
    # Scale to zero: nothing visible or in flight for idle_minutes (in flight: a task mid-batch).
    st.idle = st.idle + 1 if visible == 0 and busy == 0 else 0
    if st.idle >= s.idle_minutes and st.desired > s.min_tasks and now - st.last_zero >= 300.0:
        st.desired, st.last_zero, st.high, st.low = s.min_tasks, now, 0, 0
        return
    # Scale from zero: jobs visible, no task desired.
    if st.desired == 0:
        if visible > 0 and now - st.last_out >= s.scale_out_cooldown:
            st.desired, st.last_out = min(s.max_tasks, s.scale_from_zero_tasks), now
        return
    if running == 0:
        return  # backlog per task undefined while the first tasks start
    per_task = visible / running
    wanted = max(1, s.min_tasks, min(s.max_tasks, math.ceil(running * per_task / s.target_backlog_per_task)))
    st.high = st.high + 1 if per_task > s.target_backlog_per_task else 0
    st.low = st.low + 1 if per_task < 0.9 * s.target_backlog_per_task else 0
    if st.high >= s.out_datapoints and wanted > st.desired and now - st.last_out >= s.scale_out_cooldown:
        st.desired, st.last_out, st.high = wanted, now, 0
    elif st.low >= s.in_datapoints and wanted < st.desired and now - st.last_in >= s.scale_in_cooldown:
        st.desired, st.last_in, st.low = wanted, now, 0


# -- planning -------------------------------------------------------------------------------------

#: Backlog-per-task targets the planner tries, as seconds of one task's work.
TARGET_SECONDS = (2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(frozen=True)
class Plan:
    scaling: Scaling
    result: Result
    tasks_needed: int
    meets_p99: bool | None
    parameters: dict[str, Any]
    #: Tasks the plan needs kept running whatever the backlog (the scalable target's MinCapacity,
    #: 0 in the template): 0 unless the goal cannot be met without such a floor.
    floor: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks_needed": self.tasks_needed,
            "meets_p99": self.meets_p99,
            "parameters": self.parameters,
            "min_capacity_needed": self.floor,
            "result": self.result.to_dict(),
        }


def plan(
    load: Load,
    curve: ServiceCurve,
    worker: Worker,
    scaling: Scaling,
    *,
    p99: float | None = None,
) -> Plan:
    """Template parameters for ``load``: the backlog target that meets ``p99`` with the fewest paid tasks.

    Targets are tried as seconds of one task's work (:data:`TARGET_SECONDS`, none above ``p99``); at
    equal cost the smaller wins, since it reacts sooner. Without ``p99``, the template's target as
    given. ``WorkerMaxTasks`` is raised to what the peak rate needs at 80 % utilisation when the given
    maximum is lower, and ``WorkerScaleFromZeroTasks`` to what the base rate needs.

    When no target meets the goal, the same search runs with a floor of the tasks the base rate needs:
    target tracking on *visible* messages sees almost none while the tasks keep up, so it scales in
    until they no longer do, and a steady load then swings between too few tasks and catching up.
    A floor that works is returned as :attr:`Plan.floor`.
    """
    peak = max([load.rate, *(b.rate for b in load.bursts)])
    needed = steady_tasks(peak, curve, worker)
    scaling = replace(
        scaling,
        max_tasks=max(scaling.max_tasks, needed),
        scale_from_zero_tasks=max(scaling.scale_from_zero_tasks, min(needed, steady_tasks(load.rate, curve, worker))),
    )
    per_task = curve.throughput(worker.max_batch_size)
    candidates = [scaling]
    if p99 is not None:
        # A task holding more than p99 seconds of work cannot meet the goal once it is reached.
        seconds = [x for x in TARGET_SECONDS if x <= p99] or [TARGET_SECONDS[0]]
        candidates = [replace(scaling, target_backlog_per_task=max(1.0, round(per_task * x))) for x in seconds]
    found = _search(load, curve, worker, candidates, p99)
    if p99 is not None and found[1].p99 > p99 and load.rate > 0:
        floor = min(scaling.max_tasks, steady_tasks(load.rate, curve, worker))
        floored = _search(load, curve, worker, [replace(c, min_tasks=floor) for c in candidates], p99)
        if floored[1].p99 <= p99:
            found = floored
    best, result = found
    return Plan(
        scaling=best,
        result=result,
        tasks_needed=needed,
        meets_p99=None if p99 is None else result.p99 <= p99,
        parameters=template_parameters(best, worker),
        floor=best.min_tasks,
    )


def _search(
    load: Load, curve: ServiceCurve, worker: Worker, candidates: list[Scaling], p99: float | None
) -> tuple[Scaling, Result]:
    """The cheapest candidate meeting ``p99`` (the one with the lowest p99 when none does)."""
    chosen: tuple[Scaling, Result] | None = None
    fallback: tuple[Scaling, Result] | None = None
    for candidate in candidates:
        result = simulate(load, curve, worker, candidate)
        if fallback is None or result.p99 < fallback[1].p99:
            fallback = (candidate, result)
        # The cheapest that meets the goal; at equal cost the smaller target (it reacts sooner).
        if (p99 is None or result.p99 <= p99) and (chosen is None or result.mean_tasks < chosen[1].mean_tasks - 1e-6):
            chosen = (candidate, result)
    found = chosen or fallback
    assert found is not None  # at least one candidate
    return found


def template_parameters(scaling: Scaling, worker: Worker) -> dict[str, Any]:
    """The template parameters a plan sets (``sam deploy --parameter-overrides``)."""
    return {
        "WorkerMinTasks": scaling.min_tasks,
        "WorkerMaxTasks": scaling.max_tasks,
        "WorkerTargetBacklogPerTask": round(scaling.target_backlog_per_task),
        "WorkerScaleFromZeroTasks": scaling.scale_from_zero_tasks,
        "WorkerIdleMinutes": scaling.idle_minutes,
        "WorkerMaxBatchSize": worker.max_batch_size,
    }


def latency_curve(
    rates: Sequence[float],
    curve: ServiceCurve,
    worker: Worker,
    scaling: Scaling,
    *,
    duration: float = 600.0,
    seed: int = 1,
) -> list[dict[str, float]]:
    """p50/p99 against arrival rate with a fixed number of tasks (the plot's data)."""
    out = []
    for rate in rates:
        result = simulate(Load(rate, duration=duration, seed=seed), curve, worker, replace(scaling, fixed=True))
        out.append({"rate": rate, "p50_s": result.p50, "p99_s": result.p99, "final_queue": result.final_queue})
    return out


def parse_curve(spec: Mapping[str, float] | str) -> ServiceCurve:
    """A curve from ``{"1": 0.036, "8": 0.2}`` (as stored in JSON) or ``"1:0.036,8:0.2"``."""
    if isinstance(spec, str):
        return ServiceCurve.parse(spec)
    return ServiceCurve(tuple((int(b), float(s)) for b, s in spec.items()))
