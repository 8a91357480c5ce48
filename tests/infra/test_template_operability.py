"""Dashboard, alarms, alarm topic and callback secret in the transformed template."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest

from twopass.local import template as tpl
from twopass.observability.metrics import Metric


@cache
def resources() -> dict[str, Any]:
    return tpl.transform_file()["Resources"]  # type: ignore[no-any-return]


def of_type(kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources().items() if v["Type"] == kind}


def test_dashboard_plots_every_twopass_metric_and_the_aws_ones() -> None:
    (dashboard,) = of_type("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dashboard["Properties"]["DashboardBody"])
    for metric in Metric:
        # A metric with a dimension of its own (SlowAnswers by model_version) is plotted by a search.
        assert f'\\"{metric.value}\\"' in body or f"MetricName={metric.value}'" in body, metric
    for aws_metric in (
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "RunningTaskCount",
        "4XXError",
        "5XXError",
        "Latency",
    ):
        assert aws_metric in body


def test_alarms_page_the_alarm_topic() -> None:
    alarms = of_type("AWS::CloudWatch::Alarm")
    paging = {"DeadLetterAlarm", "OldestJobAgeAlarm", "HighPriorityDeadLetterAlarm", "HighPriorityOldestJobAgeAlarm",
              "Api5xxAlarm"}  # fmt: skip
    assert paging <= set(alarms)
    for name in paging:
        actions = json.dumps(alarms[name]["Properties"]["AlarmActions"])
        assert '{"Ref": "AlarmTopic"}' in actions, name
    assert alarms["DeadLetterAlarm"]["Properties"]["Threshold"] == 0
    assert alarms["HighPriorityDeadLetterAlarm"]["Properties"]["Threshold"] == 0
    for name in ("OldestJobAgeAlarm", "HighPriorityOldestJobAgeAlarm"):
        assert alarms[name]["Properties"]["Threshold"] == {"Ref": "OldestJobAgeAlarmSeconds"}
    expression = [m for m in alarms["Api5xxAlarm"]["Properties"]["Metrics"] if m.get("Expression")]
    assert "errors / requests" in expression[0]["Expression"]


def test_alarm_topic_is_encrypted_and_email_is_optional() -> None:
    topic = resources()["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "LogsKey"}
    assert resources()["AlarmEmailSubscription"]["Condition"] == "HasAlarmEmail"


def test_worker_gets_the_callback_secret_from_secrets_manager() -> None:
    (container,) = resources()["WorkerTaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert {"Name": "TWOPASS_CALLBACK_SECRET", "ValueFrom": {"Ref": "CallbackSecret"}} in container["Secrets"]
    assert all(e["Name"] != "TWOPASS_CALLBACK_SECRET" for e in container["Environment"])  # never in plain env


def test_api_tracing_is_a_switch() -> None:
    env = resources()["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["POWERTOOLS_TRACE_DISABLED"] == {"Fn::If": ["TracingOn", "false", "true"]}


def test_payload_bucket_refuses_plain_http() -> None:
    statement = resources()["PayloadBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny"
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize(("tracing", "disabled"), [("true", "false"), ("false", "true")])
def test_conditional_env_resolves_like_cloudformation(tracing: str, disabled: str) -> None:
    cfn = tpl.transform_file(parameters={"ApiTracing": tracing})
    params = tpl.parameter_defaults(cfn, {"ApiTracing": tracing})
    env = tpl.resolve(tpl.function_environment(cfn, "ApiFunction"), lambda *_: "x", params, cfn["Conditions"])
    assert env["POWERTOOLS_TRACE_DISABLED"] == disabled
