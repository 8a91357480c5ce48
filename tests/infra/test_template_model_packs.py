"""Your own model packs on AWS: FastModel/SlowModel reach the API and the worker, read-only on exactly their prefixes."""

from __future__ import annotations

import re
from typing import Any

import pytest

from twopass.local import template as tpl


def cfn() -> dict[str, Any]:
    return tpl.transform(tpl.load())


def test_empty_parameters_keep_the_bundled_models() -> None:
    template = cfn()
    api = tpl.function_environment(template, "ApiFunction")
    worker = tpl.container_environment(template, "WorkerTaskDefinition")
    assert api["TWOPASS_FAST_MODEL"] == {
        "Fn::If": ["FastFromS3", {"Ref": "FastModel"}, "/opt/efficientnet-lite0-int8.onnx"]
    }
    assert worker["TWOPASS_SLOW_MODEL"]["Fn::If"][:2] == ["SlowFromS3", {"Ref": "SlowModel"}]
    for name in ("FastModel", "SlowModel"):
        assert template["Parameters"][name]["Default"] == ""


@pytest.mark.parametrize("name", ["FastModel", "SlowModel"])
@pytest.mark.parametrize(
    ("value", "allowed"),
    [("", True), ("s3://my-models/flowers/v3/", True), ("s3://my-models/flowers/v3", False), ("/opt/x.onnx", False)],
)
def test_a_pack_is_an_s3_prefix(name: str, value: str, allowed: bool) -> None:
    assert bool(re.fullmatch(cfn()["Parameters"][name]["AllowedPattern"], value)) is allowed


@pytest.mark.parametrize(
    ("policy", "parameter", "role"),
    [("ApiFastModelPolicy", "FastModel", "ApiFunctionRole"), ("WorkerSlowModelPolicy", "SlowModel", "WorkerTaskRole")],
)
def test_each_role_reads_its_own_pack_prefix_and_nothing_else(policy: str, parameter: str, role: str) -> None:
    template = cfn()
    resource = template["Resources"][policy]
    assert role in template["Resources"]
    for value, present in (("", False), ("s3://my-models/flowers/v3/", True)):
        assert tpl.condition(resource["Condition"], template["Conditions"], {parameter: value}) is present
    assert resource["Properties"]["Roles"] == [{"Ref": role}]
    (statement,) = resource["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == ["s3:GetObject"] and statement["Effect"] == "Allow"
    text, variables = statement["Resource"]["Fn::Sub"]
    assert text == "arn:${AWS::Partition}:s3:::${Prefix}*"
    # s3://my-models/flowers/v3/ -> my-models/flowers/v3/ : the pack's own objects only.
    assert variables["Prefix"] == {"Fn::Join": ["", {"Fn::Split": ["s3://", {"Ref": parameter}]}]}
