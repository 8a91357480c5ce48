"""The cost model's arithmetic, the committed price table and measured figures, and the CLI."""

from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import pytest

from twopass.cli import main as cli
from twopass.tools import cost
from twopass.tools.cost import Fleet, Measured, Prices, Traffic

TEMPLATE = (Path(__file__).resolve().parents[2] / "template.yaml").read_text()

MEASURED = Measured(
    source="test figures",
    api_calls={"DynamoDB PutItem": 1.0, "SQS SendMessage": 1.0},
    worker_calls={"DynamoDB UpdateItem": 1.0, "SQS ReceiveMessage": 0.1, "SQS DeleteMessageBatch": 0.125},
    batch_size=8,
    message_bytes=47_000,
    image_bytes=35_000,
    item_bytes_created=900,
    item_bytes_final=1_500,
    handler_ms_predict=40.0,
    handler_ms_job=10.0,
    log_bytes_api=600,
    log_bytes_worker=900,
    worker_calls_per_hour={"SQS ReceiveMessage": 360, "DynamoDB UpdateItem": 360, "DynamoDB Query": 480},
    cpu_images_per_second=20.0,
    cpu_description="test CPU",
    cpu_service_curve={"1": 0.05, "8": 0.4},
    worker_overhead_seconds=0.02,
    worker_entries={"EventBridge PutEvents": 1.0, "SQS DeleteMessageBatch": 1.0},
)


def template_default(name: str) -> str:
    match = re.search(rf"^  {name}:\n(?:    .*\n)*?    Default: (\S+)", TEMPLATE, re.MULTILINE)
    assert match, name
    return match.group(1).strip('"')


def line(breakdown: cost.Breakdown, component: str) -> cost.Line:
    (found,) = [x for x in breakdown.lines if x.component.startswith(component)]
    return found


def test_price_table_says_when_where_and_from_which_page() -> None:
    prices = Prices.load()
    assert re.fullmatch(r"\d{4}-\d{2}", prices.as_of) and prices.region == "us-east-1"
    assert prices.note
    for name, source in prices.sources.items():
        assert source.startswith("https://aws.amazon.com/"), name
    default = template_default("WorkerInstanceType")
    assert prices.instance(default) > 0 and prices.sagemaker_instance(default)
    allowed = re.search(r"WorkerInstanceType:\n(?:    .*\n)*?    AllowedValues:\n\s+\[([^\]]+)\]", TEMPLATE)
    assert allowed
    assert set(prices.ec2) <= {v.strip() for v in allowed.group(1).replace("\n", " ").split(",")}
    with pytest.raises(ValueError, match="no price"):
        prices.instance("p5.48xlarge")


def test_defaults_follow_the_template() -> None:
    fleet = Fleet()
    assert fleet.instance_type == template_default("WorkerInstanceType")
    assert fleet.lambda_memory_mb == int(template_default("ApiMemorySize"))
    assert fleet.root_volume_gib == int(template_default("WorkerRootVolumeGiB"))


def test_each_component_is_the_measured_quantity_times_its_price() -> None:
    prices = Prices.load()
    p = prices.price
    fleet = Fleet(images_per_second=400, throughput_source="input")
    traffic = Traffic(image_bytes=35_000, polls_per_job=1, traced_share=0.05)
    b = cost.twopass(MEASURED, traffic, fleet, prices)
    assert line(b, "API requests").usd_per_million == pytest.approx(2 * p("api_gateway_rest_per_million_requests"))
    # (40 + 10) ms at 2 GB, a million times.
    assert line(b, "API handler compute").usd_per_million == pytest.approx(
        0.05 * 2 * 1e6 * p("lambda_x86_per_gb_second")
    )
    # 47 KB messages: one chunk a send; the receives carry 0.72 chunk a job; 0.125 deletes.
    sqs = 1 + max(0.1, 47_000 / 65_536) + 0.125
    assert line(b, "queue requests").usd_per_million == pytest.approx(sqs * p("sqs_standard_per_million_requests"))
    # 900 B created (1 WRU), 1.5 KB final (2 WRU); one strongly consistent read of 1.5 KB.
    assert line(b, "job record writes").usd_per_million == pytest.approx(3 * p("dynamodb_on_demand_per_million_wru"))
    assert line(b, "job reads").usd_per_million == pytest.approx(1 * p("dynamodb_on_demand_per_million_rru"))
    # Both indexes project everything: the put writes the 1-unit item into both, the final update
    # rewrites the 2-unit item in owner-created and deletes it from pending-created (sized like it).
    assert line(b, "index writes").usd_per_million == pytest.approx(
        (2 * 1 + 2 * 2) * p("dynamodb_on_demand_per_million_wru")
    )
    # Access logs: one line per request; answers to the client leave AWS.
    assert line(b, "API access logs").usd_per_million == pytest.approx(
        1e6 * 2 * cost.ACCESS_LOG_BYTES / 1e9 * p("cloudwatch_logs_ingest_per_gb")
    )
    assert line(b, "data transfer out").usd_per_million == pytest.approx(
        1e6 * 1500 / 1e9 * p("data_transfer_out_per_gb")
    )
    assert line(b, "public IPv4").usd_per_million == pytest.approx(p("public_ipv4_per_hour") / (400 * 3600) * 1e6)
    # One completion event per job, whatever the PutEvents calls carrying them.
    assert line(b, "job completion events").usd_per_million == pytest.approx(p("eventbridge_per_million_events"))
    gpu = prices.instance("g4dn.xlarge") / (400 * 3600) * 1e6
    assert line(b, "GPU instance-hours").usd_per_million == pytest.approx(gpu)
    assert line(b, "GPU instance-hours").kind == "input"
    assert b.total == pytest.approx(sum(x.usd_per_million for x in b.lines))
    assert sum(b.share(x) for x in b.lines) == pytest.approx(1.0)


def test_bigger_images_cost_more_queue_requests_and_claim_checks_cost_s3() -> None:
    prices = Prices.load()
    fleet = Fleet(images_per_second=400)
    small = cost.twopass(MEASURED, Traffic(image_bytes=35_000), fleet, prices)
    big = cost.twopass(MEASURED, Traffic(image_bytes=150_000, claim_check_share=0.1), fleet, prices)
    # 150 KB → ~200 KB of base64: four 64 KiB chunks a send.
    assert line(big, "queue requests").usd_per_million > 3 * line(small, "queue requests").usd_per_million
    assert line(big, "claim checks").usd_per_million == pytest.approx(
        0.1 * 1e6 * (prices.price("s3_put_per_thousand") + prices.price("s3_get_per_thousand")) / 1000
    )
    assert not [x for x in small.lines if x.service == "S3"]


def test_gpu_cost_falls_as_throughput_rises_and_rises_with_overprovisioning() -> None:
    prices = Prices.load()
    costs = [cost.twopass(MEASURED, Traffic(), Fleet(images_per_second=ips), prices).total for ips in (50, 200, 800)]
    assert costs[0] > costs[1] > costs[2]
    packed = cost.twopass(MEASURED, Traffic(), Fleet(images_per_second=200), prices)
    loose = cost.twopass(MEASURED, Traffic(), Fleet(images_per_second=200, overprovision=2.0), prices)
    assert line(loose, "GPU instance-hours").usd_per_million == pytest.approx(
        2 * line(packed, "GPU instance-hours").usd_per_million
    )


def test_sagemaker_async_side_by_side_uses_the_equivalent_instance() -> None:
    prices = Prices.load()
    comparison = cost.compare(Traffic(), Fleet(images_per_second=400), measured=MEASURED, prices=prices)
    assert comparison.sagemaker is not None
    gpu = line(comparison.sagemaker, "GPU instance-hours")
    assert gpu.usd_per_million == pytest.approx(prices.sagemaker["ml.g4dn.xlarge"] / (400 * 3600) * 1e6)
    s3 = [x for x in comparison.sagemaker.lines if x.service == "S3"]
    assert len(s3) == 3  # input and output both go through S3, and are stored there
    assert line(comparison.sagemaker, "input and output storage").usd_per_million == pytest.approx(
        1e6 * (35_000 + 600) / 1e9 * 7 / 30 * prices.price("s3_storage_per_gb_month")
    )
    out = comparison.to_dict()
    fast = sum(x.usd_per_million for x in cost.fast_path_lines(comparison.twopass))
    assert out["sagemaker_async_with_fast_path_usd_per_million"] == pytest.approx(
        comparison.sagemaker.total + fast, abs=1e-3
    )
    text = cost.markdown(comparison)
    assert "SageMaker async" in text and prices.as_of in text and "input" in text


def test_without_a_throughput_the_cpu_figure_stands_in_and_says_so() -> None:
    comparison = cost.compare(Traffic(), Fleet(), measured=MEASURED)
    assert comparison.fleet.images_per_second == MEASURED.cpu_images_per_second
    assert "not a GPU" in comparison.fleet.throughput_source
    assert "not a GPU" in cost.markdown(comparison)
    assert cost.CPU_STAND_IN in comparison.warnings and cost.CPU_STAND_IN in comparison.to_dict()["warnings"]
    given = cost.compare(Traffic(), Fleet(images_per_second=400), measured=MEASURED)
    assert cost.CPU_STAND_IN not in given.warnings


def test_utilisation_is_stated_and_an_assumed_full_one_is_a_warning() -> None:
    full = cost.compare(Traffic(), Fleet(images_per_second=400), measured=MEASURED, utilisation_known=False)
    assert cost.FULL_UTILISATION in full.warnings and full.to_dict()["utilisation"] == 1.0
    assert "Utilisation: 100%" in cost.markdown(full)
    eighth = cost.compare(Traffic(), Fleet(images_per_second=400, overprovision=8.0), measured=MEASURED)
    assert eighth.to_dict()["utilisation"] == 0.125 and cost.FULL_UTILISATION not in eighth.warnings
    # Both sides pay for the same idle hours.
    assert eighth.sagemaker is not None and full.sagemaker is not None
    for side in ("twopass", "sagemaker"):
        busy, idle = getattr(full, side), getattr(eighth, side)
        assert line(idle, "GPU instance-hours").usd_per_million == pytest.approx(
            8 * line(busy, "GPU instance-hours").usd_per_million
        )


def test_request_counts_follow_the_batch_size() -> None:
    prices = Prices.load()
    lone = cost.worker_calls(MEASURED, Traffic(rate=0.1), Fleet(images_per_second=400, mean_batch=1.0))
    assert lone["SQS ReceiveMessage"] == 1.0 and lone["SQS DeleteMessageBatch"] == 1.0
    full = cost.worker_calls(MEASURED, Traffic(rate=100), Fleet(images_per_second=400, mean_batch=32))
    assert full["SQS ReceiveMessage"] == pytest.approx(0.1) and full["SQS DeleteMessageBatch"] == pytest.approx(0.1)
    # Batches of 1 at 20 jobs/s: a receive each, but deletes shared across the 2 s linger (40 jobs, 10 a call).
    steady = cost.worker_calls(MEASURED, Traffic(rate=20), Fleet(images_per_second=400, mean_batch=1.0))
    assert steady["SQS ReceiveMessage"] == 1.0 and steady["SQS DeleteMessageBatch"] == pytest.approx(0.1)
    small = cost.twopass(MEASURED, Traffic(rate=0.1), Fleet(images_per_second=400, mean_batch=1.0), prices)
    big = cost.twopass(MEASURED, Traffic(rate=100), Fleet(images_per_second=400, mean_batch=32), prices)
    assert line(small, "queue requests").usd_per_million > line(big, "queue requests").usd_per_million


def test_xray_follows_the_sampling_rule() -> None:
    # 2 requests per job: at 0.5 jobs/s every request falls in the 1/s reservoir.
    assert cost.traced_share(Traffic(rate=0.5, polls_per_job=1)) == pytest.approx(1.0)
    # 10 requests/s: 1 in the reservoir, 5 % of the other 9.
    assert cost.traced_share(Traffic(rate=5, polls_per_job=1)) == pytest.approx((1 + 0.45) / 10)
    assert cost.traced_share(Traffic(rate=10_000, polls_per_job=1)) == pytest.approx(0.05, abs=1e-4)
    assert cost.traced_share(Traffic()) == 0.05


def test_fixed_monthly_costs_and_the_stack_counts_follow_the_template() -> None:
    from infra.docs import stack_counts

    assert stack_counts.main(["--check"]) == 0, "run python -m infra.docs.stack_counts"
    stack = cost.Stack.load()
    prices = Prices.load()
    p = prices.price
    monthly = cost.fixed_monthly(stack, Fleet(images_per_second=400), Traffic(rate=10), prices, MEASURED)
    by = {m.component: m.usd_per_month for m in monthly.lines}
    assert by["alarms"] == pytest.approx(stack.alarm_metrics * p("cloudwatch_alarm_per_month"))
    assert by["SnapStart snapshot cache"] == pytest.approx(2 * 730 * 3600 * p("lambda_snapstart_cache_per_gb_second"))
    assert by["point-in-time recovery"] == pytest.approx(10 * 7 * 86400 * 1500 / 1e9 * p("dynamodb_pitr_per_gb_month"))
    assert monthly.total == pytest.approx(sum(by.values()))
    nat = cost.fixed_monthly(stack, Fleet(images_per_second=400, nat_gateways=2), Traffic(), prices, MEASURED)
    assert {m.component for m in nat.lines} >= {"NAT gateways"}
    with_nat = cost.twopass(MEASURED, Traffic(), Fleet(images_per_second=400, nat_gateways=2), prices)
    assert line(with_nat, "NAT gateway data processed").usd_per_million > 0
    assert not [x for x in with_nat.lines if x.component.startswith("public IPv4")]


def test_the_totals_are_the_sums_of_their_breakdowns() -> None:
    comparison = cost.compare(Traffic(rate=50), Fleet(images_per_second=400, mean_batch=1.5, overprovision=4))
    out = comparison.to_dict()
    for side in ("twopass", "sagemaker_async"):
        total = sum(x["usd_per_million"] for x in out[side]["lines"])
        assert out[side]["total_usd_per_million"] == pytest.approx(total, abs=1e-3)
    assert out["fixed_monthly"]["total_usd_per_month"] == pytest.approx(
        sum(x["usd_per_month"] for x in out["fixed_monthly"]["lines"]), abs=0.02
    )


def test_committed_measured_figures_load_and_are_plausible() -> None:
    measured = Measured.load()
    assert measured.source and "make bench" in measured.source
    writes = sum(
        n for name, n in {**measured.api_calls, **measured.worker_calls}.items() if name.startswith("DynamoDB")
    )
    assert writes <= 2.0 + 1e-9  # record + final, at batch 8
    assert measured.api_calls.get("SQS SendMessage") == 1
    assert measured.item_bytes_final >= measured.item_bytes_created > 0
    assert measured.handler_ms_predict > 0 and measured.cpu_images_per_second > 0
    assert all(int(size) >= 1 and seconds > 0 for size, seconds in measured.cpu_service_curve.items())


def test_cost_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["cost", "--images-per-second", "400", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["twopass"]["total_usd_per_million"] > 0
    assert out["fleet"]["throughput_source"] == "input"
    assert out["sagemaker_async"]["total_usd_per_million"] > 0
    assert cli(["cost", "--instance", "g5.xlarge", "--images-per-second", "900", "--polls", "0"]) == 0
    text = capsys.readouterr().out
    assert "g5.xlarge" in text and "| **total" in text
    assert cli(["cost", "--instance", "nope.xlarge", "--images-per-second", "1"]) == 2
    assert "no price" in capsys.readouterr().err
    # No throughput, no rate: both assumptions are warnings on stderr and in the JSON.
    assert cli(["cost", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: GPU throughput not given" in captured.err and "utilisation assumed" in captured.err
    assert len(json.loads(captured.out)["warnings"]) == 2
    assert cli(["cost", "--images-per-second", "400", "--rate", "50", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["warnings"] == [] and captured.err == ""
    assert 0 < out["utilisation"] < 0.5 and 1 <= out["mean_batch"] < 2


def test_plan_cli(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["plan", "--rate", "20", "--images-per-second", "100", "--duration", "900", "--json"]
    assert cli(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tasks_needed"] == math.ceil(20 / (100 * 0.8))
    assert out["throughput"]["source"].startswith("input")
    assert out["parameters"]["WorkerMaxBatchSize"] == 32
    assert out["result"]["completed"] > 0 and out["usd_per_million_images"] > 0
    assert cli(["plan", "--rate", "5", "--duration", "600"]) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "WARNING: GPU throughput not given" in text and "not a GPU" in text and "template parameters:" in text
    assert "warning: GPU throughput not given" in captured.err
    assert cli(["plan", "--rate", "5", "--burst", "oops"]) == 2


def test_worker_periodic_cost_is_per_hour_not_per_job() -> None:
    prices = Prices.load()
    hourly = cost.worker_hourly(MEASURED, prices)
    assert hourly == pytest.approx(
        360 * prices.price("sqs_standard_per_million_requests") / 1e6
        + 360 * prices.price("dynamodb_on_demand_per_million_wru") / 1e6
        + 480 * prices.price("dynamodb_on_demand_per_million_rru") / 1e6
    )
    slow = cost.twopass(MEASURED, Traffic(), Fleet(images_per_second=10), prices)
    fast = cost.twopass(MEASURED, Traffic(), replace(Fleet(images_per_second=1000)), prices)
    assert line(slow, "worker's periodic").usd_per_million == pytest.approx(
        100 * line(fast, "worker's periodic").usd_per_million
    )


def test_the_cost_page_is_what_the_commands_print() -> None:
    from infra.docs import cost_page

    assert cost_page.main(["--check"]) == 0, "run python -m infra.docs.cost_page (make docs)"
