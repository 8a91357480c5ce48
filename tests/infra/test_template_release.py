"""What a first deploy, a release at full scale and a day of operations need from template.yaml:
releases that fit the Auto Scaling group, the AZs and instance types GPU capacity may be found in,
an alarm when none can be launched, a shell on the instances, and concurrency a new account allows."""

from __future__ import annotations

import math
import tomllib
from functools import cache
from typing import Any

import pytest

from twopass.config import REPO_ROOT
from twopass.local import template as tpl

ENVIRONMENTS = ("dev", "prod")
FAMILIES = {"g4dn", "g5", "g6"}


@cache
def _cfn() -> dict[str, Any]:
    return tpl.transform(tpl.load())


def _props(logical_id: str) -> dict[str, Any]:
    return _cfn()["Resources"][logical_id]["Properties"]


def _default(name: str) -> str:
    return str(_cfn()["Parameters"][name]["Default"])


def _env_parameters(env: str) -> dict[str, str]:
    """Every template parameter as environment ``env`` of samconfig.toml deploys it."""
    config = tomllib.loads((REPO_ROOT / "samconfig.toml").read_text())
    raw = config[env]["deploy"]["parameters"]["parameter_overrides"]
    overrides = dict(pair.split("=", 1) for pair in raw.split())
    defaults = {name: str(spec.get("Default", "")) for name, spec in _cfn()["Parameters"].items()}
    return defaults | overrides


# ---------------------------------------------------------------- a tiny CloudFormation evaluator


def _value(node: Any, params: dict[str, str], conditions: dict[str, Any]) -> Any:
    """``node`` with Ref (to parameters), Fn::If, Fn::Equals/Not/And/Or and Condition resolved."""
    if isinstance(node, list):
        items = [_value(item, params, conditions) for item in node]
        return [item for item in items if item != "AWS::NoValue"]
    if not isinstance(node, dict):
        return node
    if len(node) != 1 or not next(iter(node)).startswith(("Ref", "Fn::", "Condition")):
        resolved = {key: _value(value, params, conditions) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value != "AWS::NoValue"}
    ((key, arg),) = node.items()
    if key == "Ref":
        return params.get(arg, "AWS::NoValue" if arg == "AWS::NoValue" else {"Ref": arg})
    if key == "Condition":
        return _condition(arg, params, conditions)
    if key == "Fn::If":
        name, then, otherwise = arg
        return _value(then if _condition(name, params, conditions) else otherwise, params, conditions)
    if key == "Fn::Equals":
        left, right = (_value(a, params, conditions) for a in arg)
        return str(left) == str(right)
    if key == "Fn::Not":
        return not _value(arg[0], params, conditions)
    if key == "Fn::And":
        return all(_value(a, params, conditions) for a in arg)
    if key == "Fn::Or":
        return any(_value(a, params, conditions) for a in arg)
    return node


def _condition(name: str, params: dict[str, str], conditions: dict[str, Any]) -> bool:
    return bool(_value(conditions[name], params, conditions))


def _created(params: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The resources CloudFormation creates with ``params``, properties resolved."""
    conditions = _cfn()["Conditions"]
    out = {}
    for logical_id, resource in _cfn()["Resources"].items():
        if "Condition" in resource and not _condition(resource["Condition"], params, conditions):
            continue
        out[logical_id] = {**resource, "Properties": _value(resource.get("Properties", {}), params, conditions)}
    return out


def _params(**overrides: str) -> dict[str, str]:
    defaults = {name: str(spec.get("Default", "")) for name, spec in _cfn()["Parameters"].items()}
    return defaults | overrides


# ---------------------------------------------------------------- releases at full scale


def _instances_a_full_scale_release_needs(max_tasks: int) -> int:
    """One GPU task per instance; a rolling release runs up to MaximumPercent of the desired tasks."""
    maximum = _props("WorkerService")["DeploymentConfiguration"]["MaximumPercent"]
    return math.floor(max_tasks * maximum / 100)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_a_release_at_full_scale_fits_the_auto_scaling_group(env: str) -> None:
    params = _env_parameters(env)
    max_tasks = int(params["WorkerMaxTasks"])
    asg = _created(params)["WorkerAutoScalingGroup"]["Properties"]
    assert int(asg["MaxSize"]) == max_tasks
    assert _instances_a_full_scale_release_needs(max_tasks) <= int(asg["MaxSize"])


def test_the_deployment_replaces_tasks_in_place_and_rolls_back_a_bad_image() -> None:
    deployment = _props("WorkerService")["DeploymentConfiguration"]
    # Old tasks stop before new ones start: no instance beyond the desired count is ever needed.
    assert deployment["MaximumPercent"] == 100
    assert deployment["MinimumHealthyPercent"] == 0
    assert deployment["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    # The breaker sees a task that loads no model: the container's health check is the preflight.
    (container,) = _props("WorkerTaskDefinition")["ContainerDefinitions"]
    assert "--preflight" in container["HealthCheck"]["Command"]


def test_every_instance_type_holds_one_gpu_so_one_task_fills_an_instance() -> None:
    for name in ("WorkerInstanceType", "WorkerFallbackInstanceType1", "WorkerFallbackInstanceType2"):
        for instance_type in filter(None, _cfn()["Parameters"][name]["AllowedValues"]):
            family, size = instance_type.split(".")
            assert family in FAMILIES, instance_type
            # 12xlarge and 48xlarge are the multi-GPU sizes of these families.
            assert size in {"xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge"}, instance_type


# ---------------------------------------------------------------- AZs and instance types


@pytest.mark.parametrize("zones", [2, 3, 4, 5, 6])
def test_the_created_vpc_has_one_public_subnet_per_az_and_the_group_uses_them_all(zones: int) -> None:
    created = _created(_params(WorkerAvailabilityZones=str(zones)))
    subnets = {k: v["Properties"] for k, v in created.items() if v["Type"] == "AWS::EC2::Subnet"}
    assert len(subnets) == zones
    az_indexes = sorted(p["AvailabilityZone"]["Fn::Select"][0] for p in subnets.values())
    assert az_indexes == list(range(zones))
    assert len({p["CidrBlock"] for p in subnets.values()}) == zones
    assert all(p["MapPublicIpOnLaunch"] is True for p in subnets.values())
    routed = {
        v["Properties"]["SubnetId"]["Ref"]
        for v in created.values()
        if v["Type"] == "AWS::EC2::SubnetRouteTableAssociation"
    }
    assert routed == set(subnets)
    zone_ids = created["WorkerAutoScalingGroup"]["Properties"]["VPCZoneIdentifier"]
    assert sorted(ref["Ref"] for ref in zone_ids) == sorted(subnets)


def test_the_az_count_defaults_to_three_and_counts_nothing_with_an_existing_vpc() -> None:
    assert _default("WorkerAvailabilityZones") == "3"
    params = _params(VpcId="vpc-0123456789abcdef0", SubnetIds="subnet-1,subnet-2", WorkerAvailabilityZones="6")
    params["SubnetIds"] = ["subnet-1", "subnet-2"]  # type: ignore[assignment]
    created = _created(params)
    assert not [k for k, v in created.items() if v["Type"] == "AWS::EC2::Subnet"]
    assert created["WorkerAutoScalingGroup"]["Properties"]["VPCZoneIdentifier"] == ["subnet-1", "subnet-2"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_instance_types_fall_back_across_g4dn_g5_and_g6_in_order(env: str) -> None:
    params = _env_parameters(env)
    asg = _created(params)["WorkerAutoScalingGroup"]["Properties"]
    assert "LaunchTemplate" not in asg  # the mixed instances policy holds it
    policy = asg["MixedInstancesPolicy"]
    assert policy["InstancesDistribution"]["OnDemandAllocationStrategy"] == "prioritized"
    assert policy["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 100
    types = [o["InstanceType"] for o in policy["LaunchTemplate"]["Overrides"]]
    assert types[0] == params["WorkerInstanceType"]
    assert len(types) == len(set(types)) == 3
    assert {t.split(".")[0] for t in types} == FAMILIES


def test_without_fallbacks_the_group_launches_the_one_type() -> None:
    params = _params(WorkerFallbackInstanceType1="", WorkerFallbackInstanceType2="")
    asg = _created(params)["WorkerAutoScalingGroup"]["Properties"]
    assert asg["MixedInstancesPolicy"]["LaunchTemplate"]["Overrides"] == [{"InstanceType": "g4dn.xlarge"}]


def test_a_repeated_instance_type_is_refused_before_anything_is_created() -> None:
    rules = tpl.load()["Rules"]["DistinctInstanceTypes"]["Assertions"]
    conditions = _cfn()["Conditions"]

    def passes(**overrides: str) -> bool:
        return all(_value(rule["Assert"], _params(**overrides), conditions) for rule in rules)

    assert passes()
    assert passes(WorkerFallbackInstanceType1="", WorkerFallbackInstanceType2="")
    assert not passes(WorkerFallbackInstanceType1="g4dn.xlarge")
    assert not passes(WorkerFallbackInstanceType2="g4dn.xlarge")
    assert not passes(WorkerFallbackInstanceType1="g6.xlarge", WorkerFallbackInstanceType2="g6.xlarge")


# ---------------------------------------------------------------- jobs never wait silently


def _alarm_metrics(alarm: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["Id"]: m for m in alarm["Metrics"]}


def test_an_alarm_pages_when_the_group_cannot_launch_the_instances_it_wants() -> None:
    alarm = _props("WorkerLaunchFailureAlarm")
    metrics = _alarm_metrics(alarm)
    for metric_id, name in (("desired", "GroupDesiredCapacity"), ("in_service", "GroupInServiceInstances")):
        metric = metrics[metric_id]["MetricStat"]["Metric"]
        assert (metric["Namespace"], metric["MetricName"]) == ("AWS/AutoScaling", name)
        assert metric["Dimensions"] == [{"Name": "AutoScalingGroupName", "Value": {"Ref": "WorkerAutoScalingGroup"}}]
    (returned,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert returned["Expression"] == "FILL(desired, 0) - FILL(in_service, 0)"
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)
    # Longer than a healthy launch (boot, ECS agent) takes, short enough that jobs do not wait an hour.
    assert 5 <= alarm["EvaluationPeriods"] == alarm["DatapointsToAlarm"] <= 15
    collected = _props("WorkerAutoScalingGroup")["MetricsCollection"]
    assert {"GroupDesiredCapacity", "GroupInServiceInstances"} <= set(collected[0]["Metrics"])


def test_every_paging_alarm_notifies_the_alarm_topic() -> None:
    for logical_id, resource in _cfn()["Resources"].items():
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        actions = resource["Properties"]["AlarmActions"]
        if actions and all(a.get("Ref", "").startswith("WorkerScale") for a in actions if isinstance(a, dict)):
            continue  # a scaling trigger, not a page
        assert actions["Fn::If"][1][0] == {"Ref": "AlarmTopic"}, logical_id
        assert actions["Fn::If"][2] == [{"Ref": "AlarmTopic"}], logical_id


# ---------------------------------------------------------------- operators can look inside


def test_instances_register_with_session_manager_without_keys_or_inbound_rules() -> None:
    policies = _props("WorkerInstanceRole")["ManagedPolicyArns"]
    assert {"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"} in policies
    data = _props("WorkerLaunchTemplate")["LaunchTemplateData"]
    assert "KeyName" not in data
    assert "SecurityGroupIngress" not in _props("WorkerSecurityGroup")
    # ECS Exec writes its agent into the container, which a read-only root filesystem refuses: the
    # shell is the instance's (docker exec from there), not ECS Exec.
    (container,) = _props("WorkerTaskDefinition")["ContainerDefinitions"]
    assert container["ReadonlyRootFilesystem"] is True
    assert not _props("WorkerService").get("EnableExecuteCommand")


# ---------------------------------------------------------------- a new account


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_concurrency_defaults_are_what_a_new_account_allows(env: str) -> None:
    """A new account's Lambda quota can be 10, and 100 must stay unreserved: nothing to reserve."""
    params = _env_parameters(env)
    assert params["ApiReservedConcurrency"] == "0"
    assert params["ApiProvisionedConcurrency"] == "0"


def test_the_image_tag_default_is_a_placeholder_the_release_path_replaces() -> None:
    # The stack starts at zero tasks, so its first deploy never pulls the default tag; make deploy
    # always passes the git sha.
    assert _default("ImageTag") == "0.1.0"
    assert _props("WorkerService")["DesiredCount"] == 0


def test_the_deploy_page_tables_are_what_the_generator_writes() -> None:
    from infra.docs import deploy_page

    assert deploy_page.main(["--check"]) == 0, "run python -m infra.docs.deploy_page (make docs)"
    capacity = deploy_page.capacity_table()
    # prod: 8 tasks of 4-vCPU types; a release at full scale needs the same 8 instances.
    assert "| prod | g5.xlarge, g6.xlarge, g4dn.xlarge | 8 | 8 | 32 |" in capacity
