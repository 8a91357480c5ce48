"""template.yaml's part of the cascade, the result cache, agreement and rollouts: parameters (off by
default), the settings they become on the API and the worker, the agreement alarm, the dashboard, and
the worker's read access to an s3:// candidate model."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import pytest

from twopass.config import Settings
from twopass.local import template as tpl
from twopass.worker.rollout import Rollout

PARAMETERS = (
    "CascadeThreshold",
    "ResultCache",
    "ResultCacheTtlHours",
    "FastSlowAgreementAlarmThreshold",
    "CandidateSlowModel",
    "RolloutMode",
)


@cache
def cfn() -> dict[str, Any]:
    return tpl.transform_file()  # type: ignore[no-any-return]


def test_everything_is_off_by_default() -> None:
    defaults = tpl.parameter_defaults(cfn())
    assert {name: defaults[name] for name in PARAMETERS} == {
        "CascadeThreshold": "0",
        "ResultCache": "false",
        "ResultCacheTtlHours": "24",
        "FastSlowAgreementAlarmThreshold": "0.5",
        "CandidateSlowModel": "",
        "RolloutMode": "",
    }
    settings = Settings.from_env({"TWOPASS_CASCADE_THRESHOLD": "0", "TWOPASS_RESULT_CACHE": "false"})
    assert settings.cascade_threshold == 0 and settings.result_cache is False


def test_the_api_and_the_worker_get_their_settings() -> None:
    api = tpl.function_environment(cfn(), "ApiFunction")
    assert api["TWOPASS_CASCADE_THRESHOLD"] == {"Ref": "CascadeThreshold"}
    assert api["TWOPASS_RESULT_CACHE"] == {"Ref": "ResultCache"}
    assert api["TWOPASS_RESULT_CACHE_TTL_HOURS"] == {"Ref": "ResultCacheTtlHours"}
    worker = tpl.container_environment(cfn(), "WorkerTaskDefinition", "worker")
    # The worker fills the cache the API reads: both follow the one parameter.
    assert worker["TWOPASS_RESULT_CACHE"] == {"Ref": "ResultCache"}
    assert worker["TWOPASS_RESULT_CACHE_TTL_HOURS"] == {"Ref": "ResultCacheTtlHours"}
    assert worker["TWOPASS_CANDIDATE_SLOW_MODEL"] == {"Ref": "CandidateSlowModel"}
    assert worker["TWOPASS_ROLLOUT_MODE"] == {"Ref": "RolloutMode"}


@pytest.mark.parametrize("mode", ["", "shadow", "shadow:10", "canary:5", "canary:12.5"])
def test_rollout_modes_the_template_allows_are_ones_the_worker_reads(mode: str) -> None:
    pattern = cfn()["Parameters"]["RolloutMode"]["AllowedPattern"]
    assert re.fullmatch(pattern, mode)
    Rollout.parse(mode)


@pytest.mark.parametrize("mode", ["canary", "blue", "shadow:", "canary:5%"])
def test_the_template_refuses_rollout_modes_the_worker_would_refuse(mode: str) -> None:
    assert not re.fullmatch(cfn()["Parameters"]["RolloutMode"]["AllowedPattern"], mode)


@pytest.mark.parametrize(
    ("location", "allowed"),
    [("", True), ("/opt/models/efficientnet-lite2-fp16.onnx", True), ("s3://my-models/lite2/v2.onnx", True),
     ("s3://my-models/lite2/v2.pt", False), ("models/v2.onnx", False), ("https://example.com/v2.onnx", False)],
)  # fmt: skip
def test_candidate_locations(location: str, allowed: bool) -> None:
    pattern = cfn()["Parameters"]["CandidateSlowModel"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, location)) is allowed


def test_agreement_alarm_pages_when_the_rate_stays_low() -> None:
    alarm = cfn()["Resources"]["FastSlowAgreementAlarm"]["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("twopass", "FastSlowAgreement", "Average")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "twopass-worker"}]
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["Threshold"] == {"Ref": "FastSlowAgreementAlarmThreshold"}
    assert alarm["TreatMissingData"] == "notBreaching"  # no slow answers (all cached, scaled to zero) is no alarm
    assert '{"Ref": "AlarmTopic"}' in json.dumps(alarm["AlarmActions"])
    body = json.dumps(cfn()["Resources"]["Dashboard"]["Properties"]["DashboardBody"])
    assert "FastSlowAgreementAlarmArn" in body and "model_version" in body


def _evaluate(node: Any, parameters: dict[str, str]) -> Any:
    """Ref, Fn::Select, Fn::Split and Fn::Join, as CloudFormation evaluates them."""
    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key == "Ref":
            return parameters[value]
        if key == "Fn::Select":
            return _evaluate(value[1], parameters)[int(value[0])]
        if key == "Fn::Split":
            return _evaluate(value[1], parameters).split(value[0])
        if key == "Fn::Join":
            return value[0].join(_evaluate(value[1], parameters))
    if isinstance(node, list):
        return [_evaluate(v, parameters) for v in node]
    return node


@pytest.mark.parametrize(
    ("location", "from_s3", "stem"),
    [("s3://my-models/lite2/v2.onnx", True, "my-models/lite2/v2"), ("/opt/models/x.onnx", False, None),
     ("", False, None)],
)  # fmt: skip
def test_the_worker_may_read_an_s3_candidate_and_nothing_else(location: str, from_s3: bool, stem: str | None) -> None:
    resources = cfn()["Resources"]
    policy = resources["WorkerCandidateModelPolicy"]
    condition = cfn()["Conditions"][policy["Condition"]]
    parameters = {"CandidateSlowModel": location}
    equals = condition["Fn::Equals"]
    assert (_evaluate(equals[0], parameters) == equals[1]) is from_s3
    assert policy["Properties"]["Roles"] == [{"Ref": "WorkerTaskRole"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["s3:GetObject"]
    text, variables = statement["Resource"]["Fn::Sub"]
    assert text == "arn:${AWS::Partition}:s3:::${Stem}*"
    if stem is not None:
        # The model and its card beside it (v2.onnx, v2.card.json), under that one prefix.
        assert _evaluate(variables["Stem"], parameters) == stem
