"""``python -m twopass.worker``: run the slow-model worker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

from twopass.config import Settings
from twopass.exceptions import ModelLoadError
from twopass.observability import logs
from twopass.worker.events import WorkerEvents

if TYPE_CHECKING:
    from twopass.jobs.base import JobStore
    from twopass.queue.base import MessageSource
    from twopass.worker.chores.reconcile import Reconciler
    from twopass.worker.runner import Worker

logger = logging.getLogger("twopass.worker")

#: Exit status of a worker whose model could not get a required execution provider.
START_FAILED = 3


def build_worker(settings: Settings) -> Worker:
    """Wire the worker from settings: the slow model, the SQS queue(s), the DynamoDB store, the payload bucket.

    With a high-priority queue configured the worker reads both (see :class:`~twopass.worker.intake.Share`)
    and sweeps both dead-letter queues.
    """
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.models.pack import check_pair
    from twopass.notify.events import attach as attach_events
    from twopass.payloads import PayloadStore
    from twopass.queue.priority import PrioritySource
    from twopass.queue.sqs import SqsSource
    from twopass.worker.chores import deadletter
    from twopass.worker.models import load_slow
    from twopass.worker.runner import Worker

    settings.require("queue_url", "table_name")
    classifier = load_slow(settings)
    check_pair(settings.fast_model, settings.slow_model)  # both passes must name the same classes
    visibility = settings.visibility_timeout_seconds
    source: MessageSource = SqsSource(settings.queue_url, visibility_timeout=visibility)
    queues = [settings.queue_url]
    if settings.high_priority_queue_url:
        high = SqsSource(settings.high_priority_queue_url, visibility_timeout=visibility)
        source = PrioritySource(high, source)
        queues.append(settings.high_priority_queue_url)
    store = DynamoJobStore(settings.table_name, ttl_seconds=settings.job_ttl_seconds)
    dlq_urls = [url for url in map(deadletter.dead_letter_queue_url, queues) if url is not None]
    sweeper = functools.partial(deadletter.sweep_all, dlq_urls, store) if dlq_urls else None
    events = build_events(settings)
    # On the store, so the sweep and the reconciler (same store) announce their final states too.
    completion = attach_events(store, settings.event_bus, metrics=getattr(events, "metrics", None))
    if completion is not None:
        events.on_close(completion.close)
    return Worker(
        classifier,
        source,
        store,
        settings,
        sweeper=sweeper,
        events=events,
        # Reads stop at the largest image the API accepts, whatever was put behind a job's reference since.
        payloads=PayloadStore(
            bucket=settings.payload_bucket, max_bytes=max(settings.upload_max_bytes, settings.max_image_bytes)
        ),
        reconciler=build_reconciler(settings, store),
    )


def build_reconciler(settings: Settings, store: JobStore) -> Reconciler:
    """The reconciler for the job queue; past the queue's retention no message can exist any more."""
    from twopass import aws
    from twopass.queue.base import JobPublisher
    from twopass.queue.priority import PriorityPublisher
    from twopass.queue.sqs import SqsPublisher
    from twopass.worker.chores.reconcile import Reconciler

    client = aws.client("sqs")
    with aws.translate_errors("queue retention"):
        attrs = client.get_queue_attributes(QueueUrl=settings.queue_url, AttributeNames=["MessageRetentionPeriod"])
    retention = float(attrs.get("Attributes", {}).get("MessageRetentionPeriod", 4 * 86400))
    publisher: JobPublisher = SqsPublisher(settings.queue_url, client=client)
    if settings.high_priority_queue_url:
        # Both backlogs count when it asks whether a job's message may still be waiting somewhere.
        publisher = PriorityPublisher(SqsPublisher(settings.high_priority_queue_url, client=client), publisher)
    return Reconciler(
        store,
        publisher,
        after_seconds=settings.reconcile_after_seconds,
        retention_seconds=retention,
    )


def build_events(settings: Settings) -> WorkerEvents:
    """Metrics (EMF on stdout) and, when a secret is configured, signed completion callbacks."""
    from twopass.notify.sender import CallbackSender
    from twopass.observability.metrics import Metric, MetricsSink
    from twopass.worker.events import ObservedEvents

    metrics = MetricsSink(service="twopass-worker")
    callbacks = None

    def dropped(count: int) -> None:
        # Called at shutdown, after the events' last flush: flush again so the count goes out.
        metrics.add(Metric.CALLBACKS_DROPPED, count)
        metrics.flush()

    if settings.callback_secret:
        callbacks = CallbackSender(
            settings.callback_secret,
            allow_private=settings.callback_allow_private,
            allow_http=settings.callback_allow_http,
            attempts=settings.callback_attempts,
            on_result=lambda ok: metrics.add(Metric.CALLBACKS_DELIVERED if ok else Metric.CALLBACKS_FAILED, 1),
            on_dropped=dropped,
        )
    return ObservedEvents(metrics, callbacks)


def run_one(settings: Settings) -> int:
    """One worker in this process; SIGTERM and SIGINT stop it gracefully.

    The handlers go in before the model loads: in a container the worker is PID 1, and a SIGTERM
    that arrived while it had none would be ignored until the runtime's SIGKILL.
    """
    stop_requested = threading.Event()
    worker: Worker | None = None

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s: finishing the batch in flight", signal.Signals(signum).name)
        stop_requested.set()
        if worker is not None:
            worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker = build_worker(settings)
    except ModelLoadError as exc:  # an invalid model pack, or a required provider (CUDA) missing
        # A start failure, in one line: the task exits non-zero, so ECS's deployment circuit breaker
        # stops a rollout whose tasks cannot use their GPU instead of letting them serve on the CPU.
        print(f"twopass-worker cannot start: {exc}", file=sys.stderr, flush=True)
        return START_FAILED
    if stop_requested.is_set():
        return 0
    worker.run()
    return 0


def _child(settings: Settings) -> None:
    logs.configure(settings.log_level, service="twopass-worker", fmt=settings.log_format)
    sys.exit(run_one(settings))


def run_pool(settings: Settings, processes: int) -> int:
    """``processes`` workers, each with its own model session; signals are forwarded to all."""
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_child, args=(settings,), name=f"worker-{i}") for i in range(processes)]
    for child in children:
        child.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    return max((child.exitcode or 0) for child in children)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m twopass.worker",
        description="Consume twopass jobs from SQS, run the slow model in batches, write results to DynamoDB. "
        "Settings come from TWOPASS_* environment variables; flags override them.",
    )
    parser.add_argument("--processes", type=int, help="worker processes (default TWOPASS_WORKER_PROCESSES or 1)")
    parser.add_argument("--max-batch-size", type=int, help="largest batch (TWOPASS_MAX_BATCH_SIZE)")
    parser.add_argument("--max-wait-ms", type=int, help="longest wait to fill a batch (TWOPASS_MAX_WAIT_MS)")
    parser.add_argument("--receivers", type=int, help="concurrent long-polling receivers (TWOPASS_RECEIVERS)")
    parser.add_argument(
        "--preflight",
        action="store_true",
        help="load the slow model as configured, run one warm-up batch, print the provider, device, CUDA/cuDNN "
        "versions and timings, and exit (non-zero when a required provider is missing); needs no queue or table",
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    overrides = {
        name: value
        for name, value in (
            ("max_batch_size", args.max_batch_size),
            ("max_wait_ms", args.max_wait_ms),
            ("receivers", args.receivers),
        )
        if value is not None
    }
    settings = settings.replace(**overrides)
    if args.preflight:
        from twopass.worker.preflight import preflight

        return preflight(settings)
    logs.configure(settings.log_level, service="twopass-worker", fmt=settings.log_format)
    processes = args.processes or settings.worker_processes
    return run_pool(settings, processes) if processes > 1 else run_one(settings)
