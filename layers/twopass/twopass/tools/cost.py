"""Cost model: measured figures (AWS calls per job, handler time, bytes) and list prices → dollars per
million images, broken down by where the money goes, beside SageMaker Asynchronous Inference.

Inputs come in three kinds, and every line of the breakdown says which it rests on:

* **measured** on this machine by ``make bench`` (``twopass/data/measured.json``): AWS calls per job by
  operation, queue message and table item sizes, the API handler's duration, log bytes per job;
* **input**, a figure nobody measured here: above all a GPU task's throughput (images/s), and the
  traffic's shape (image size, ``GET /job`` polls per job, share of images over the claim-check size);
* **price**, from the committed table ``twopass/data/prices.json`` (its date, region and sources).

Standard library only: ``twopass cost`` runs from a client-only install.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

MILLION = 1_000_000
GB = 1_000_000_000
#: SQS bills each 64 KiB chunk of a request's payload as one request.
SQS_CHUNK = 64 * 1024
#: DynamoDB: a write request unit covers 1 KB of item, a strongly consistent read unit 4 KB.
WRU_BYTES = 1024
RRU_BYTES = 4096
#: Hours in a month, as AWS prices monthly items.
MONTH_HOURS = 730.0
#: Lambda's own log lines per invocation (START, END, REPORT), estimated from their format.
LAMBDA_PLATFORM_LOG_BYTES = 330
#: One API Gateway access log line (the template's JSON format with typical values), estimated.
ACCESS_LOG_BYTES = 350
#: X-Ray's default sampling rule: the first request each second (the reservoir), then 5 % of the rest.
XRAY_RESERVOIR_PER_SECOND = 1.0
XRAY_FIXED_RATE = 0.05
#: Messages one SQS receive or DeleteMessageBatch handles at most, and entries one PutEvents carries.
SQS_BATCH_MAX = 10
EVENTS_BATCH_MAX = 10
#: The worker holds deletes up to this long so that consecutive batches share a DeleteMessageBatch.
DELETE_LINGER_SECONDS = 2.0
#: The job table's global secondary indexes (``pending-created``, ``owner-created``), both projecting
#: every attribute: the API's put writes the item into both; the worker's final update rewrites it in
#: ``owner-created`` and removes it from ``pending-created`` (``pending`` is dropped). Each index write
#: is at least one write unit, so a narrower projection saves nothing while items stay under 1 KB.
GSI_WRITES_CREATE = 2
GSI_WRITES_FINAL = 2


def _data(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(resources.files("twopass").joinpath("data", name).read_text())
    return loaded


@dataclass(frozen=True)
class Prices:
    """The committed price table: ``price(name)`` per item, instance-hours by type."""

    region: str
    as_of: str
    note: str
    items: dict[str, dict[str, Any]]
    ec2: dict[str, float]
    sagemaker: dict[str, float]
    sources: dict[str, str]

    @classmethod
    def load(cls, path: Path | None = None) -> Prices:
        data = json.loads(path.read_text()) if path is not None else _data("prices.json")
        ec2, sm = data["ec2_on_demand_per_hour"], data["sagemaker_inference_per_hour"]
        sources = {name: item["source"] for name, item in data["items"].items()}
        sources.update(ec2=ec2["source"], sagemaker=sm["source"])
        return cls(data["region"], data["as_of"], data["note"], data["items"], ec2["prices"], sm["prices"], sources)

    def price(self, name: str) -> float:
        return float(self.items[name]["price"])

    def instance(self, instance_type: str) -> float:
        try:
            return float(self.ec2[instance_type])
        except KeyError:
            raise ValueError(f"no price for {instance_type}; known: {', '.join(sorted(self.ec2))}") from None

    def sagemaker_instance(self, instance_type: str) -> float | None:
        return self.sagemaker.get(f"ml.{instance_type}")


@dataclass(frozen=True)
class Measured:
    """What ``make bench`` measured (defaults: the committed ``measured.json``)."""

    #: Where and when: the dated summary that holds these figures.
    source: str
    #: AWS calls per job by "Service Operation", API and worker, at ``batch_size``.
    api_calls: dict[str, float]
    worker_calls: dict[str, float]
    batch_size: int
    #: Bytes of one job's queue message (the image inline, base64, and its JSON).
    message_bytes: int
    #: The job item's size as created by the API and once final (DynamoDB's sizing).
    item_bytes_created: int
    item_bytes_final: int
    #: API handler (Lambda, REST event → answer) p50 ms for POST /predict and GET /job.
    handler_ms_predict: float
    handler_ms_job: float
    #: Log bytes written per job by the API and by the worker (EMF metric lines included).
    log_bytes_api: float
    log_bytes_worker: float
    #: Calls an idle worker makes per hour (heartbeat, polls, sweeps), whatever the load.
    worker_calls_per_hour: dict[str, float]
    #: The image the figures were measured with.
    image_bytes: int
    #: Slow-model throughput of one worker on this machine's CPU (images/s) — an example, not a GPU.
    cpu_images_per_second: float
    cpu_description: str
    #: That worker's model seconds by batch size (``{"1": 0.04, …}``) and its overhead per job.
    cpu_service_curve: dict[str, float]
    worker_overhead_seconds: float
    #: Entries of the worker's batch calls per job ("EventBridge PutEvents": completion events).
    worker_entries: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Measured:
        data = json.loads(path.read_text()) if path is not None else _data("measured.json")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)


@dataclass(frozen=True)
class Traffic:
    """The load's shape (inputs)."""

    #: Encoded image size; the queue message and the SageMaker payload scale with it.
    image_bytes: int = 35_000
    #: ``GET /job`` calls per job (0 with completion callbacks; each is an API request and a Lambda run).
    polls_per_job: float = 1.0
    #: Share of images over the claim-check size (256 KiB): they travel through S3.
    claim_check_share: float = 0.0
    #: Share of API requests X-Ray traces (the template's ApiTracing is on; Lambda samples ~5 %).
    traced_share: float = 0.05
    #: Size of a slow result as SageMaker would write it (JSON, top 5).
    result_bytes: int = 600
    #: Mean arrival rate (jobs/s), when known: X-Ray's reservoir traces far more than 5 % at low rates.
    rate: float | None = None
    #: Bytes sent back to the client per image (the POST answer and the polls' answers): data transfer out.
    response_bytes: int = 1_500


@dataclass(frozen=True)
class Fleet:
    """The GPU side: the instance and one task's throughput."""

    instance_type: str = "g4dn.xlarge"
    #: Images per second one worker task sustains. **An input** unless measured on that GPU.
    images_per_second: float = 0.0
    throughput_source: str = "input"
    #: Average tasks paid per task needed at full utilisation (1.0: perfectly packed; the planner's
    #: ``mean_tasks`` / load gives the real figure for a given rate and scaling).
    overprovision: float = 1.0
    root_volume_gib: int = 60  # WorkerRootVolumeGiB
    lambda_memory_mb: int = 2048  # ApiMemorySize
    #: Mean batch the workers run (the planner's simulation gives it for a load); ``None``: the
    #: measured run's batch size, whose call counts are taken as they are.
    mean_batch: float | None = None
    #: Each GPU instance in the created VPC's public subnets has a public IPv4 address (billed hourly).
    public_ipv4: bool = True
    #: Private subnets behind NAT gateways (one per AZ): hourly, and per GB of queue traffic through them.
    nat_gateways: int = 0
    #: Worker tasks paid on average (the planner's figure): deletes of several tasks are not shared.
    tasks: float = 1.0

    @property
    def utilisation(self) -> float:
        """Share of the paid task-hours spent serving images."""
        return 1.0 / self.overprovision


@dataclass(frozen=True)
class Line:
    component: str
    service: str
    usd_per_million: float
    basis: str
    #: "measured", "input" or "estimate": what the quantity (not the price) rests on.
    kind: str


@dataclass(frozen=True)
class Breakdown:
    title: str
    lines: list[Line]

    @property
    def total(self) -> float:
        return sum(line.usd_per_million for line in self.lines)

    def share(self, line: Line) -> float:
        return line.usd_per_million / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        lines = [
            {**line.__dict__, "usd_per_million": round(line.usd_per_million, 4), "share": round(self.share(line), 4)}
            for line in self.lines
        ]
        return {"title": self.title, "total_usd_per_million": round(self.total, 4), "lines": lines}


def _calls(calls: dict[str, float], service: str, ops: set[str] | None = None) -> float:
    return sum(n for name, n in calls.items() if name.split()[0] == service and (ops is None or name.split()[1] in ops))


def message_bytes(measured: Measured, traffic: Traffic) -> float:
    """The queue message for ``traffic``'s image, scaled from the measured one (base64 is 4/3)."""
    overhead = max(0.0, measured.message_bytes - measured.image_bytes * 4 / 3)
    return overhead + traffic.image_bytes * 4 / 3


def worker_calls(measured: Measured, traffic: Traffic, fleet: Fleet) -> dict[str, float]:
    """The worker's AWS calls per image at ``fleet.mean_batch``, or as measured when it is not given.

    A receive returns at most 10 messages and a batch of ``b`` jobs was received together, so a batch
    costs ``1/min(10, b)`` receives per job; completion events go out per batch the same way; deletes
    also share calls across the batches of the last 2 s of one task (the worker's delete linger).
    """
    if fleet.mean_batch is None:
        return dict(measured.worker_calls)
    batch = max(1.0, fleet.mean_batch)
    per_task_rate = (traffic.rate or 0.0) / max(1.0, fleet.tasks)
    delete_group = min(SQS_BATCH_MAX, max(batch, per_task_rate * DELETE_LINGER_SECONDS))
    calls = {k: v for k, v in measured.worker_calls.items() if not k.startswith(("SQS", "EventBridge"))}
    calls["SQS ReceiveMessage"] = 1 / min(SQS_BATCH_MAX, batch)
    calls["SQS DeleteMessageBatch"] = 1 / delete_group
    if measured.worker_entries.get("EventBridge PutEvents"):
        calls["EventBridge PutEvents"] = 1 / min(EVENTS_BATCH_MAX, batch)
    return calls


def _all_calls(measured: Measured, traffic: Traffic | None = None, fleet: Fleet | None = None) -> dict[str, float]:
    """AWS calls per image, API and worker together."""
    calls = worker_calls(measured, traffic, fleet) if traffic and fleet else dict(measured.worker_calls)
    for name, n in measured.api_calls.items():
        calls[name] = calls.get(name, 0.0) + n
    return calls


def _api_lines(measured: Measured, traffic: Traffic, fleet: Fleet, prices: Prices) -> list[Line]:
    """API Gateway and the API Lambda: one POST and the polls per image."""
    p = prices.price
    requests = 1 + traffic.polls_per_job
    gb = fleet.lambda_memory_mb / 1024
    lambda_ms = measured.handler_ms_predict + traffic.polls_per_job * measured.handler_ms_job
    return [
        Line(
            "API requests (POST /predict + GET /job polls)",
            "API Gateway",
            requests * p("api_gateway_rest_per_million_requests"),
            f"{requests:g} REST requests per image",
            "input",
        ),
        Line(
            "API handler compute",
            "Lambda",
            lambda_ms / 1000 * gb * MILLION * p("lambda_x86_per_gb_second"),
            f"{lambda_ms:.1f} ms at {fleet.lambda_memory_mb} MB per image (handler p50 "
            f"{measured.handler_ms_predict:.1f} ms POST, {measured.handler_ms_job:.1f} ms GET)",
            "measured",
        ),
        Line(
            "API invocations", "Lambda", requests * p("lambda_per_million_requests"), f"{requests:g} per image", "input"
        ),
    ]


def _queue_line(measured: Measured, traffic: Traffic, calls: dict[str, float], prices: Prices) -> Line:
    """SQS: each call billed by its payload's 64 KiB chunks; a receive carries its messages' bodies."""
    p = prices.price
    msg = message_bytes(measured, traffic)
    sends = _calls(calls, "SQS", {"SendMessage"})
    receives = _calls(calls, "SQS", {"ReceiveMessage"})
    others = _calls(calls, "SQS") - sends - receives
    billed = sends * math.ceil(msg / SQS_CHUNK) + max(receives, msg / SQS_CHUNK) + others
    return Line(
        "queue requests (send, receive, delete)",
        "SQS",
        billed * p("sqs_standard_per_million_requests"),
        f"{sends + receives + others:.2f} calls per image, {billed:.2f} billed with {msg / 1024:.0f} KiB messages",
        "measured",
    )


def _table_lines(measured: Measured, traffic: Traffic, calls: dict[str, float], prices: Prices) -> list[Line]:
    """DynamoDB: the job record's writes and its index writes, its reads by polls, and its week of storage."""
    p = prices.price
    puts = _calls(calls, "DynamoDB", {"PutItem", "TransactWriteItems", "BatchWriteItem"})
    updates = _calls(calls, "DynamoDB", {"UpdateItem", "DeleteItem"})
    # An update is sized by the larger of the item before and after: the final item.
    created_units = math.ceil(measured.item_bytes_created / WRU_BYTES)
    final_units = math.ceil(measured.item_bytes_final / WRU_BYTES)
    wru = puts * created_units + updates * final_units
    # The indexes project every attribute: each index write is sized like the item it holds.
    index_wru = GSI_WRITES_CREATE * created_units + GSI_WRITES_FINAL * final_units
    rru = traffic.polls_per_job * math.ceil(measured.item_bytes_final / RRU_BYTES)
    rru += _calls(calls, "DynamoDB", {"GetItem", "Query"})
    week = 7 / 30  # JobRetentionDays' default: an item lives a week
    return [
        Line(
            "job record writes (create + final)",
            "DynamoDB",
            wru * p("dynamodb_on_demand_per_million_wru"),
            f"{puts + updates:.2f} writes, {wru:.2f} WRU per image "
            f"(items {measured.item_bytes_created} → {measured.item_bytes_final} B)",
            "measured",
        ),
        Line(
            "index writes (pending-created, owner-created)",
            "DynamoDB",
            index_wru * p("dynamodb_on_demand_per_million_wru"),
            f"{index_wru:.2f} WRU per image: the put enters both indexes, the final update rewrites "
            "owner-created and leaves pending-created",
            "estimate",
        ),
        Line(
            "job reads (GET /job)",
            "DynamoDB",
            rru * p("dynamodb_on_demand_per_million_rru"),
            f"{rru:.2f} strongly consistent RRU per image",
            "input",
        ),
        Line(
            "job record storage (7 days, table and both indexes)",
            "DynamoDB",
            3 * MILLION * measured.item_bytes_final / GB * week * p("dynamodb_storage_per_gb_month"),
            f"{measured.item_bytes_final} B for 7 days, in the table and owner-created (pending-created while queued)",
            "measured",
        ),
    ]


def traced_share(traffic: Traffic) -> float:
    """Share of API requests X-Ray records: the reservoir's one a second, then the fixed rate."""
    if traffic.rate is None:
        return traffic.traced_share
    requests_per_second = traffic.rate * (1 + traffic.polls_per_job)
    if requests_per_second <= 0:
        return 0.0
    reservoir = min(requests_per_second, XRAY_RESERVOIR_PER_SECOND)
    return (reservoir + XRAY_FIXED_RATE * (requests_per_second - reservoir)) / requests_per_second


def _side_lines(measured: Measured, traffic: Traffic, calls: dict[str, float], prices: Prices) -> list[Line]:
    """S3 claim checks, EventBridge completion events, CloudWatch logs and X-Ray traces; the optional ones
    only when the traffic or the measured run has them."""
    lines = _optional_lines(measured, traffic, calls, prices)
    lines += _observability_lines(measured, traffic, prices)
    return lines


def _optional_lines(measured: Measured, traffic: Traffic, calls: dict[str, float], prices: Prices) -> list[Line]:
    """S3 claim checks and EventBridge completion events, when the traffic or the measured run has them."""
    p = prices.price
    lines: list[Line] = []
    if traffic.claim_check_share:
        lines.append(
            Line(
                "claim checks (images over 256 KiB)",
                "S3",
                traffic.claim_check_share * (p("s3_put_per_thousand") + p("s3_get_per_thousand")) * 1000,
                f"{traffic.claim_check_share:.0%} of images: PUT + GET (DELETE is free)",
                "input",
            )
        )
    events = measured.worker_entries.get("EventBridge PutEvents", 0.0)
    if events:
        lines.append(
            Line(
                "job completion events",
                "EventBridge",
                events * p("eventbridge_per_million_events"),
                f"{events:.2f} events per image ({_calls(calls, 'EventBridge'):.2f} PutEvents calls)",
                "measured",
            )
        )
    return lines


def _observability_lines(measured: Measured, traffic: Traffic, prices: Prices) -> list[Line]:
    """CloudWatch logs (the services' and the stage's access log), X-Ray traces, answers sent out."""
    p = prices.price
    lines: list[Line] = []
    requests = 1 + traffic.polls_per_job
    log_bytes = measured.log_bytes_api + measured.log_bytes_worker + requests * LAMBDA_PLATFORM_LOG_BYTES
    lines.append(
        Line(
            "logs and EMF metrics",
            "CloudWatch",
            MILLION * log_bytes / GB * p("cloudwatch_logs_ingest_per_gb"),
            f"{log_bytes:.0f} B per image (API {measured.log_bytes_api:.0f}, worker {measured.log_bytes_worker:.0f}, "
            f"Lambda's own lines ~{LAMBDA_PLATFORM_LOG_BYTES} per invocation)",
            "measured",
        )
    )
    lines.append(
        Line(
            "API access logs",
            "CloudWatch",
            MILLION * requests * ACCESS_LOG_BYTES / GB * p("cloudwatch_logs_ingest_per_gb"),
            f"~{ACCESS_LOG_BYTES} B per request (the stage's JSON access log line), {requests:g} requests per image",
            "estimate",
        )
    )
    share = traced_share(traffic)
    if share:
        basis = (
            f"{share:.1%} of requests traced at {traffic.rate:g} jobs/s (1 request/s, then 5 %)"
            if traffic.rate is not None
            else f"{share:.0%} of requests traced (input; at low rates the 1 request/s reservoir traces more)"
        )
        lines.append(Line("traces", "X-Ray", requests * share * p("xray_per_million_traces"), basis, "input"))
    lines.append(
        Line(
            "data transfer out (answers to clients)",
            "Data transfer",
            MILLION * traffic.response_bytes / GB * p("data_transfer_out_per_gb"),
            f"{traffic.response_bytes} B of answers per image",
            "input",
        )
    )
    return lines


def twopass(measured: Measured, traffic: Traffic, fleet: Fleet, prices: Prices) -> Breakdown:
    """Dollars per million images through twopass, by component."""
    calls = _all_calls(measured, traffic, fleet)
    lines = _api_lines(measured, traffic, fleet, prices)
    lines.append(_queue_line(measured, traffic, calls, prices))
    lines += _table_lines(measured, traffic, calls, prices)
    lines += _side_lines(measured, traffic, calls, prices)
    lines += _gpu_lines(fleet, prices, prices.instance(fleet.instance_type), fleet.instance_type)
    lines += _network_lines(measured, traffic, fleet, prices)
    hourly = worker_hourly(measured, prices)
    lines.append(
        Line(
            "worker's periodic calls (heartbeat, polls, sweeps)",
            "SQS + DynamoDB",
            hourly / _images_per_hour(fleet) * MILLION,
            f"${hourly:.4f} per task-hour",
            "measured",
        )
    )
    return Breakdown(f"twopass on {fleet.instance_type}", lines)


def _images_per_hour(fleet: Fleet) -> float:
    if fleet.images_per_second <= 0:
        raise ValueError("a task's throughput (images/s) is needed: give it (an input unless measured on the GPU)")
    return fleet.images_per_second * 3600 / fleet.overprovision


def _gpu_lines(fleet: Fleet, prices: Prices, hourly: float, label: str, service: str = "EC2") -> list[Line]:
    per_hour = _images_per_hour(fleet)
    volume = fleet.root_volume_gib * prices.price("ebs_gp3_per_gb_month") / MONTH_HOURS
    basis = f"${hourly:g}/h at {fleet.images_per_second:g} images/s per task ({fleet.throughput_source})"
    if fleet.overprovision != 1.0:
        basis += f", {fleet.overprovision:.2f} tasks paid per task busy"
    kind = "input" if fleet.throughput_source.startswith("input") else "measured"
    disk = f"{fleet.root_volume_gib} GiB gp3 while the instance runs"
    return [
        Line(f"GPU instance-hours ({label})", service, hourly / per_hour * MILLION, basis, kind),
        Line("GPU instance root volume", "EBS", volume / per_hour * MILLION, disk, kind),
    ]


def _network_lines(measured: Measured, traffic: Traffic, fleet: Fleet, prices: Prices) -> list[Line]:
    """The GPU instances' public IPv4 addresses, or the NAT gateways private subnets need instead."""
    p = prices.price
    per_hour = _images_per_hour(fleet)
    lines: list[Line] = []
    if fleet.public_ipv4 and not fleet.nat_gateways:
        lines.append(
            Line(
                "public IPv4 address of each GPU instance",
                "VPC",
                p("public_ipv4_per_hour") / per_hour * MILLION,
                f"${p('public_ipv4_per_hour')}/h per instance while it runs",
                "input",
            )
        )
    if fleet.nat_gateways:
        # Hourly NAT cost is fixed (see fixed_monthly); the queue's messages pass through it.
        lines.append(
            Line(
                "NAT gateway data processed",
                "VPC",
                MILLION * message_bytes(measured, traffic) / GB * p("nat_gateway_per_gb"),
                f"{message_bytes(measured, traffic) / 1024:.0f} KiB of queue message per image through NAT",
                "estimate",
            )
        )
    return lines


def worker_hourly(measured: Measured, prices: Prices) -> float:
    """Dollars an idle worker's own calls cost per hour (they do not scale with jobs)."""
    calls = measured.worker_calls_per_hour
    sqs = _calls(calls, "SQS") * prices.price("sqs_standard_per_million_requests") / MILLION
    # Heartbeat updates rewrite the workers item (a few hundred bytes a worker): 1 WRU each.
    wru = _calls(calls, "DynamoDB", {"UpdateItem", "PutItem"}) * prices.price("dynamodb_on_demand_per_million_wru")
    rru = _calls(calls, "DynamoDB", {"Query", "GetItem"}) * prices.price("dynamodb_on_demand_per_million_rru")
    return sqs + (wru + rru) / MILLION


def sagemaker_async(measured: Measured, traffic: Traffic, fleet: Fleet, prices: Prices) -> Breakdown:
    """The same images through a SageMaker asynchronous endpoint on the equivalent instance.

    Async inference takes its input from S3 and writes its output there; it has no fast answer, so a
    fast label needs the same API and Lambda in front (:meth:`Comparison.to_dict` adds them).
    """
    hourly = prices.sagemaker_instance(fleet.instance_type)
    if hourly is None:
        known = ", ".join(sorted(prices.sagemaker))
        raise ValueError(f"no SageMaker price for ml.{fleet.instance_type}; known: {known}")
    p = prices.price
    s3_pair = (p("s3_put_per_thousand") + p("s3_get_per_thousand")) * 1000
    logs = MILLION * measured.log_bytes_worker / GB * p("cloudwatch_logs_ingest_per_gb")
    lines = [
        Line("input upload (client PUT) and read (endpoint GET)", "S3", s3_pair, "1 PUT + 1 GET per image", "input"),
        Line("output write (endpoint PUT) and read (client GET)", "S3", s3_pair, "1 PUT + 1 GET per image", "input"),
        Line(
            "data processed in",
            "SageMaker",
            MILLION * traffic.image_bytes / GB * p("sagemaker_data_in_per_gb"),
            f"{traffic.image_bytes / 1000:.0f} KB per image",
            "input",
        ),
        Line(
            "data processed out",
            "SageMaker",
            MILLION * traffic.result_bytes / GB * p("sagemaker_data_out_per_gb"),
            f"{traffic.result_bytes} B per result",
            "input",
        ),
        Line(
            "input and output storage (7 days)",
            "S3",
            MILLION * (traffic.image_bytes + traffic.result_bytes) / GB * (7 / 30) * p("s3_storage_per_gb_month"),
            "each image and its result kept 7 days (as long as twopass keeps a job)",
            "input",
        ),
        Line("success notification", "SNS", p("sns_per_million_publishes"), "1 publish per image", "input"),
        Line(
            "endpoint logs",
            "CloudWatch",
            logs,
            f"{measured.log_bytes_worker:.0f} B per image, as the worker's",
            "measured",
        ),
    ]
    lines.extend(_gpu_lines(fleet, prices, hourly, f"ml.{fleet.instance_type}", "SageMaker")[:1])
    return Breakdown(f"SageMaker async on ml.{fleet.instance_type}", lines)


@dataclass(frozen=True)
class Stack:
    """What the deployed stack holds whatever the load (``twopass/data/stack.json``, counted from
    ``template.yaml`` by the tests): alarms, dashboards, custom metrics, SnapStart, the image."""

    source: str
    #: Metrics the alarms watch (a metric-math alarm bills each metric it reads).
    alarm_metrics: int
    dashboards: int
    #: EMF metric names (each with its ``service`` dimension); more with per-version dimensions.
    custom_metrics: int
    #: ApiSnapStart's default: one published version's snapshot cached.
    snapstart: bool
    #: The GPU worker image in ECR (compressed), an estimate for the CUDA base image.
    worker_image_gb: float
    #: Subnets (one per AZ) the created VPC spans: NAT gateways, when chosen, are one per AZ.
    availability_zones: int

    @classmethod
    def load(cls, path: Path | None = None) -> Stack:
        data = json.loads(path.read_text()) if path is not None else _data("stack.json")
        return cls(**data)


@dataclass(frozen=True)
class MonthlyLine:
    component: str
    service: str
    usd_per_month: float
    basis: str
    kind: str


@dataclass(frozen=True)
class Monthly:
    """Costs per month whatever the load: the stack's standing parts."""

    lines: list[MonthlyLine]

    @property
    def total(self) -> float:
        return sum(line.usd_per_month for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        lines = [{**line.__dict__, "usd_per_month": round(line.usd_per_month, 2)} for line in self.lines]
        return {"total_usd_per_month": round(self.total, 2), "lines": lines}


def fixed_monthly(stack: Stack, fleet: Fleet, traffic: Traffic, prices: Prices, measured: Measured) -> Monthly:
    """What the stack costs a month at any load, zero included (instances scale to zero; these do not)."""
    p = prices.price
    lines = [
        MonthlyLine(
            "alarms",
            "CloudWatch",
            stack.alarm_metrics * p("cloudwatch_alarm_per_month"),
            f"{stack.alarm_metrics} alarm metrics",
            "measured",
        ),
        MonthlyLine(
            "dashboard",
            "CloudWatch",
            stack.dashboards * p("cloudwatch_dashboard_per_month"),
            f"{stack.dashboards} dashboard (free if the account has fewer than 3)",
            "measured",
        ),
        MonthlyLine(
            "custom metrics (EMF)",
            "CloudWatch",
            stack.custom_metrics * p("cloudwatch_metric_per_month"),
            f"{stack.custom_metrics} metric names, each billed only in a month it is emitted",
            "measured",
        ),
        MonthlyLine(
            "worker image",
            "ECR",
            stack.worker_image_gb * p("ecr_storage_per_gb_month"),
            f"{stack.worker_image_gb:g} GB compressed (one image; old tags cost as much each)",
            "estimate",
        ),
    ]
    lines += _load_monthly_lines(stack, fleet, traffic, prices, measured)
    return Monthly(lines)


def _load_monthly_lines(
    stack: Stack, fleet: Fleet, traffic: Traffic, prices: Prices, measured: Measured
) -> list[MonthlyLine]:
    """The standing costs a choice or the load sizes: SnapStart, point-in-time recovery, NAT gateways."""
    p = prices.price
    lines: list[MonthlyLine] = []
    if stack.snapstart:
        cached = fleet.lambda_memory_mb / 1024 * MONTH_HOURS * 3600 * p("lambda_snapstart_cache_per_gb_second")
        lines.append(
            MonthlyLine(
                "SnapStart snapshot cache",
                "Lambda",
                cached,
                f"one published version at {fleet.lambda_memory_mb} MB (restores are per cold start, not counted)",
                "measured",
            )
        )
    if traffic.rate is not None:
        table_gb = traffic.rate * 7 * 86400 * measured.item_bytes_final / GB
        lines.append(
            MonthlyLine(
                "point-in-time recovery",
                "DynamoDB",
                table_gb * p("dynamodb_pitr_per_gb_month"),
                f"a table of {table_gb:.2f} GB (7 days of jobs at {traffic.rate:g} jobs/s)",
                "estimate",
            )
        )
    if fleet.nat_gateways:
        lines.append(
            MonthlyLine(
                "NAT gateways",
                "VPC",
                fleet.nat_gateways * MONTH_HOURS * p("nat_gateway_per_hour"),
                f"{fleet.nat_gateways} gateway(s), one per AZ",
                "input",
            )
        )
    return lines


def fast_path_lines(breakdown: Breakdown) -> list[Line]:
    """The lines of a twopass breakdown that give the fast answer (API Gateway, Lambda, X-Ray)."""
    return [line for line in breakdown.lines if line.service in ("API Gateway", "Lambda", "X-Ray")]


#: Said when the GPU throughput is the CPU figure measured here.
CPU_STAND_IN = (
    "GPU throughput not given: the CPU figure measured here stands in, so GPU costs are a CPU's; "
    "give --images-per-second (or --curve) measured on the GPU instance"
)
#: Said when nothing says how busy the tasks are.
FULL_UTILISATION = (
    "utilisation assumed 100 % (a task busy every second it is paid for); give --rate for the load's "
    "own figure from the planner, or --overprovision"
)
#: SageMaker async's instances run one request per invocation unless the container batches itself.
SAGEMAKER_BATCHING = (
    "SageMaker async invokes the model once per request: reaching the same images/s per instance needs "
    "a container that batches concurrent invocations (MaxConcurrentInvocationsPerInstance above 1)"
)


@dataclass(frozen=True)
class Comparison:
    twopass: Breakdown
    sagemaker: Breakdown | None
    prices: Prices
    measured: Measured
    traffic: Traffic
    fleet: Fleet
    monthly: Monthly | None = None
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prices": {"region": self.prices.region, "as_of": self.prices.as_of},
            "measured": self.measured.source,
            "traffic": self.traffic.__dict__,
            "fleet": self.fleet.__dict__,
            "utilisation": round(self.fleet.utilisation, 4),
            "mean_batch": self.fleet.mean_batch if self.fleet.mean_batch is not None else self.measured.batch_size,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "twopass": self.twopass.to_dict(),
        }
        if self.sagemaker is not None:
            fast = sum(line.usd_per_million for line in fast_path_lines(self.twopass))
            out["sagemaker_async"] = self.sagemaker.to_dict()
            out["sagemaker_async_with_fast_path_usd_per_million"] = round(self.sagemaker.total + fast, 4)
        if self.monthly is not None:
            out["fixed_monthly"] = self.monthly.to_dict()
        return out


def compare(
    traffic: Traffic,
    fleet: Fleet,
    *,
    measured: Measured | None = None,
    prices: Prices | None = None,
    stack: Stack | None = None,
    utilisation_known: bool = True,
) -> Comparison:
    """Both breakdowns at the same utilisation, the fixed monthly costs, and what to be wary of."""
    measured = measured or Measured.load()
    prices = prices or Prices.load()
    stack = stack or Stack.load()
    warnings: list[str] = []
    if fleet.images_per_second <= 0 or fleet.throughput_source.startswith("measured on CPU"):
        warnings.append(CPU_STAND_IN)
    if fleet.images_per_second <= 0:
        source = f"measured on CPU, not a GPU: {measured.cpu_description}"
        fleet = replace(fleet, images_per_second=measured.cpu_images_per_second, throughput_source=source)
    if not utilisation_known and fleet.overprovision == 1.0:
        warnings.append(FULL_UTILISATION)
    sm = sagemaker_async(measured, traffic, fleet, prices) if prices.sagemaker_instance(fleet.instance_type) else None
    return Comparison(
        twopass(measured, traffic, fleet, prices),
        sm,
        prices,
        measured,
        traffic,
        fleet,
        fixed_monthly(stack, fleet, traffic, prices, measured),
        tuple(warnings),
        (SAGEMAKER_BATCHING,) if sm is not None else (),
    )


def markdown(comparison: Comparison) -> str:
    """The breakdown as Markdown tables, twopass beside SageMaker async."""
    c = comparison
    batch = c.fleet.mean_batch if c.fleet.mean_batch is not None else c.measured.batch_size
    out = [f"WARNING: {w}" for w in c.warnings]
    out += [
        f"Prices: {c.prices.region}, list prices as of {c.prices.as_of} (`twopass/data/prices.json`, sources there). "
        f"Measured figures: {c.measured.source}. GPU throughput: {c.fleet.images_per_second:g} images/s per task "
        f"({c.fleet.throughput_source}). Utilisation: {c.fleet.utilisation:.0%} of paid task time busy; "
        f"mean batch {batch:g}.",
        "",
        "| component | service | $ per million images | share | basis |",
        "|---|---|---|---|---|",
    ]
    for line in sorted(c.twopass.lines, key=lambda x: -x.usd_per_million):
        out.append(
            f"| {line.component} | {line.service} | {line.usd_per_million:.3f} | {c.twopass.share(line):.1%} "
            f"| {line.basis} ({line.kind}) |"
        )
    out.append(f"| **total: {c.twopass.title}** | | **{c.twopass.total:.2f}** | 100% | |")
    if c.sagemaker is not None:
        fast = sum(line.usd_per_million for line in fast_path_lines(c.twopass))
        out += ["", "| SageMaker async component | service | $ per million images | basis |", "|---|---|---|---|"]
        for line in sorted(c.sagemaker.lines, key=lambda x: -x.usd_per_million):
            usd = f"{line.usd_per_million:.3f}"
            out.append(f"| {line.component} | {line.service} | {usd} | {line.basis} ({line.kind}) |")
        out.append(f"| **total: {c.sagemaker.title}** (no fast answer) | | **{c.sagemaker.total:.2f}** | |")
        with_fast = c.sagemaker.total + fast
        out.append(f"| **with the same fast path in front** (API Gateway + Lambda) | | **{with_fast:.2f}** | |")
        out += ["", *(f"Note: {n}" for n in c.notes)]
    if c.monthly is not None:
        out += ["", "| per month whatever the load | service | $ per month | basis |", "|---|---|---|---|"]
        for m in sorted(c.monthly.lines, key=lambda x: -x.usd_per_month):
            out.append(f"| {m.component} | {m.service} | {m.usd_per_month:.2f} | {m.basis} ({m.kind}) |")
        out.append(f"| **total per month** | | **{c.monthly.total:.2f}** | |")
    return "\n".join(out)
