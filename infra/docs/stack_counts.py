"""Count what the stack holds whatever the load, from ``template.yaml`` and the metric names, into
``twopass/data/stack.json`` (``twopass cost`` reads it; it runs where the template is not shipped).

    python -m infra.docs.stack_counts          # rewrite the file
    python -m infra.docs.stack_counts --check  # exit 1 when the file is out of date

Alarms bill per metric they read: a metric-math alarm once per ``MetricStat``, and each target-tracking
policy adds the two alarms Application Auto Scaling creates for it (high and low), each reading the
policy's metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twopass.config import DATA_DIR
from twopass.local import template as tpl
from twopass.observability.metrics import Metric

STACK_JSON = DATA_DIR / "stack.json"
#: The CUDA worker image's compressed size in ECR: an estimate (no GPU image is built here).
WORKER_IMAGE_GB = 3.0


def _metric_count(spec: dict[str, Any]) -> int:
    metrics = spec.get("Metrics")
    return sum(1 for m in metrics if "MetricStat" in m) if metrics else 1


def counts() -> dict[str, Any]:
    template = tpl.load()
    resources: dict[str, Any] = template["Resources"]
    alarm_metrics = 0
    for resource in resources.values():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            alarm_metrics += _metric_count(props)
        tracking = props.get("TargetTrackingScalingPolicyConfiguration")
        if resource["Type"] == "AWS::ApplicationAutoScaling::ScalingPolicy" and tracking:
            alarm_metrics += 2 * _metric_count(tracking.get("CustomizedMetricSpecification", {}))
    # The created VPC has one subnet per AZ, as many as WorkerAvailabilityZones says by default.
    zones = int(template["Parameters"]["WorkerAvailabilityZones"]["Default"])
    return {
        "source": "template.yaml and twopass.observability.metrics (python -m infra.docs.stack_counts)",
        "alarm_metrics": alarm_metrics,
        "dashboards": sum(1 for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"),
        "custom_metrics": len(Metric),
        "snapstart": template["Parameters"]["ApiSnapStart"]["Default"] == "true",
        "worker_image_gb": WORKER_IMAGE_GB,
        "availability_zones": zones,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args(argv)
    text = json.dumps(counts(), indent=2) + "\n"
    if args.check:
        if STACK_JSON.read_text() != text:
            print(f"{STACK_JSON} is out of date: run python -m infra.docs.stack_counts", file=sys.stderr)
            return 1
        return 0
    STACK_JSON.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
