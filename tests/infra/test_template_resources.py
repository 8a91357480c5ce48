"""Assertions on the transformed template for what the local emulator ignores: the GPU task, the
scaling design, alarms, encryption, redrive, least-privilege IAM and the env var contract."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from functools import cache
from typing import Any

import pytest

from twopass.config import REPO_ROOT, Settings
from twopass.local import template as tpl


@cache
def _cfn() -> dict[str, Any]:
    return tpl.transform(tpl.load())


@cache
def _source() -> dict[str, Any]:
    return tpl.load()


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in _cfn()["Resources"].items() if v["Type"] == kind}


def _props(logical_id: str) -> dict[str, Any]:
    return _cfn()["Resources"][logical_id]["Properties"]


def _param_default(name: str) -> Any:
    return _cfn()["Parameters"][name]["Default"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


SETTINGS_ENV = {f.metadata["env"] for f in fields(Settings)}
RUNTIME_ENV = re.compile(r"^(AWS_[A-Z_]+|POWERTOOLS_[A-Z_]+|ORT_DISABLE_TELEMETRY)$")


# ---------------------------------------------------------------- GPU task on EC2, never Fargate


def test_no_fargate_anywhere() -> None:
    assert "FARGATE" not in json.dumps(_cfn()).upper()


def test_worker_task_definition_needs_one_gpu_on_ec2() -> None:
    (task,) = _resources("AWS::ECS::TaskDefinition").values()
    props = task["Properties"]
    assert props["RequiresCompatibilities"] == ["EC2"]
    assert props["NetworkMode"] == "bridge"
    (container,) = props["ContainerDefinitions"]
    assert container["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    assert container["Essential"] is True
    assert container["StopTimeout"] == {"Ref": "WorkerStopTimeout"}
    assert container["ReadonlyRootFilesystem"] is True
    assert container["Image"] == {"Fn::Sub": "${WorkerRepository.RepositoryUri}:${ImageTag}"}
    logs = container["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs"
    assert logs["Options"]["awslogs-group"] == {"Ref": "WorkerLogGroup"}
    assert props["TaskRoleArn"] == {"Fn::GetAtt": ["WorkerTaskRole", "Arn"]}
    assert props["ExecutionRoleArn"] == {"Fn::GetAtt": ["WorkerExecutionRole", "Arn"]}


def test_gpu_instances_use_the_ecs_gpu_ami_with_imdsv2_and_encrypted_disks() -> None:
    assert _param_default("WorkerAmiId") == "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
    assert _cfn()["Parameters"]["WorkerAmiId"]["Type"].startswith("AWS::SSM::Parameter::Value<")
    allowed = _cfn()["Parameters"]["WorkerInstanceType"]["AllowedValues"]
    assert _param_default("WorkerInstanceType") == "g4dn.xlarge"
    assert allowed and all(re.fullmatch(r"g(4dn|5|6)\.\w+", t) for t in allowed)
    data = _props("WorkerLaunchTemplate")["LaunchTemplateData"]
    assert data["ImageId"] == {"Ref": "WorkerAmiId"}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert all(b["Ebs"]["Encrypted"] is True for b in data["BlockDeviceMappings"])
    user_data = json.dumps(data["UserData"])
    assert "ECS_CLUSTER=${WorkerCluster}" in user_data
    assert "ECS_ENABLE_GPU_SUPPORT=true" in user_data


def test_capacity_provider_scales_the_asg_from_zero() -> None:
    asg = _props("WorkerAutoScalingGroup")
    assert str(asg["MinSize"]) == "0"
    assert asg["NewInstancesProtectedFromScaleIn"] is True  # required by managed termination protection
    assert "DesiredCapacity" not in asg  # the capacity provider owns it
    provider = _props("WorkerCapacityProvider")["AutoScalingGroupProvider"]
    assert provider["AutoScalingGroupArn"] == {"Ref": "WorkerAutoScalingGroup"}
    assert provider["ManagedScaling"]["Status"] == "ENABLED"
    assert provider["ManagedTerminationProtection"] == "ENABLED"
    association = _props("WorkerClusterCapacityProviders")
    assert association["CapacityProviders"] == [{"Ref": "WorkerCapacityProvider"}]
    assert _props("WorkerCluster")["ClusterSettings"] == [{"Name": "containerInsights", "Value": "enabled"}]


def test_worker_service_starts_at_zero_on_the_gpu_capacity_provider() -> None:
    service = _cfn()["Resources"]["WorkerService"]
    props = service["Properties"]
    assert props["DesiredCount"] == 0
    assert props["TaskDefinition"] == {"Ref": "WorkerTaskDefinition"}
    assert [s["CapacityProvider"] for s in props["CapacityProviderStrategy"]] == [{"Ref": "WorkerCapacityProvider"}]
    assert "LaunchType" not in props
    assert props["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
    assert "WorkerClusterCapacityProviders" in _as_list(service["DependsOn"])


# ---------------------------------------------------------------- scaling on the queue


def _queue_metric(stat: dict[str, Any], name: str, queue: str = "JobsQueue") -> bool:
    metric = stat["Metric"]
    return (
        metric["Namespace"] == "AWS/SQS"
        and metric["MetricName"] == name
        and metric["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue, "QueueName"]}}]
    )


QUEUES = ("JobsQueue", "HighPriorityJobsQueue")


def _service_metric(stat: dict[str, Any], name: str) -> bool:
    metric = stat["Metric"]
    dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
    return (
        metric["Namespace"] == "ECS/ContainerInsights"
        and metric["MetricName"] == name
        and dims == {"ClusterName": {"Ref": "WorkerCluster"}, "ServiceName": {"Fn::GetAtt": ["WorkerService", "Name"]}}
    )


def test_scalable_target_goes_down_to_zero_unless_a_floor_is_set() -> None:
    (target_id, target) = next(iter(_resources("AWS::ApplicationAutoScaling::ScalableTarget").items()))
    props = target["Properties"]
    assert props["MinCapacity"] == {"Ref": "WorkerMinTasks"}
    floor = _cfn()["Parameters"]["WorkerMinTasks"]
    assert floor["Default"] == 0 and floor["MinValue"] == 0
    assert props["MaxCapacity"] == {"Ref": "WorkerMaxTasks"}
    assert props["ServiceNamespace"] == "ecs"
    assert props["ScalableDimension"] == "ecs:service:DesiredCount"
    assert props["ResourceId"] == {"Fn::Sub": "service/${WorkerCluster}/${WorkerService.Name}"}
    for policy in _resources("AWS::ApplicationAutoScaling::ScalingPolicy").values():
        assert policy["Properties"]["ScalingTargetId"] == {"Ref": target_id}


def test_target_tracking_holds_backlog_per_task() -> None:
    policies = [
        p["Properties"]
        for p in _resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
        if p["Properties"]["PolicyType"] == "TargetTrackingScaling"
    ]
    (config,) = [p["TargetTrackingScalingPolicyConfiguration"] for p in policies]
    assert config["TargetValue"] == {"Ref": "WorkerTargetBacklogPerTask"}
    assert config.get("DisableScaleIn", False) is False
    queries = {q["Id"]: q for q in config["CustomizedMetricSpecification"]["Metrics"]}
    (result,) = [q for q in queries.values() if q.get("ReturnData", True)]
    # Both queues' visible messages (a silent queue counting as none) over the running tasks.
    operands = re.fullmatch(
        r"\s*\(\s*FILL\((\w+),\s*0\)\s*\+\s*FILL\((\w+),\s*0\)\s*\)\s*/\s*(\w+)\s*", result["Expression"]
    )
    assert operands, result["Expression"]
    normal, high, running = (queries[i] for i in operands.groups())
    assert _queue_metric(normal["MetricStat"], "ApproximateNumberOfMessagesVisible")
    assert _queue_metric(high["MetricStat"], "ApproximateNumberOfMessagesVisible", "HighPriorityJobsQueue")
    assert _service_metric(running["MetricStat"], "RunningTaskCount")


def _alarm_for(policy_id: str) -> dict[str, Any]:
    (alarm,) = [
        a["Properties"]
        for a in _resources("AWS::CloudWatch::Alarm").values()
        if {"Ref": policy_id} in _as_list(a["Properties"].get("AlarmActions", []))
    ]
    return alarm


def _step_policies() -> dict[str, dict[str, Any]]:
    return {
        k: p["Properties"]["StepScalingPolicyConfiguration"]
        for k, p in _resources("AWS::ApplicationAutoScaling::ScalingPolicy").items()
        if p["Properties"]["PolicyType"] == "StepScaling"
    }


def test_a_step_policy_scales_out_from_zero_when_jobs_wait() -> None:
    outs = {
        k: c
        for k, c in _step_policies().items()
        if c["AdjustmentType"] == "ExactCapacity" and any(s["ScalingAdjustment"] != 0 for s in c["StepAdjustments"])
    }
    assert len(outs) == 1, outs
    ((policy_id, config),) = outs.items()
    # Every step sets at least one task: the parameter it uses cannot go below 1.
    for step in config["StepAdjustments"]:
        assert step["ScalingAdjustment"] == {"Ref": "WorkerScaleFromZeroTasks"}
        assert step["MetricIntervalLowerBound"] == 0 and "MetricIntervalUpperBound" not in step
    assert _cfn()["Parameters"]["WorkerScaleFromZeroTasks"]["MinValue"] >= 1
    alarm = _alarm_for(policy_id)
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarm["Threshold"] == 0
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    for queue in QUEUES:  # jobs waiting in either queue start the first task
        assert any(
            _queue_metric(q["MetricStat"], "ApproximateNumberOfMessagesVisible", queue)
            for q in queries.values()
            if "MetricStat" in q
        ), queue
    assert any(_service_metric(q["MetricStat"], "DesiredTaskCount") for q in queries.values() if "MetricStat" in q)
    (result,) = [q for q in queries.values() if q.get("ReturnData", True)]
    assert result["Expression"].replace(" ", "") == "IF(FILL(desired,0)<1,visible,0)"
    assert alarm["EvaluationPeriods"] == 1


def test_a_step_policy_scales_in_to_zero_when_the_queue_is_idle() -> None:
    ins = {
        k: c
        for k, c in _step_policies().items()
        if c["AdjustmentType"] == "ExactCapacity" and all(s["ScalingAdjustment"] == 0 for s in c["StepAdjustments"])
    }
    assert len(ins) == 1, ins
    ((policy_id, config),) = ins.items()
    alarm = _alarm_for(policy_id)
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert 0 < alarm["Threshold"] < 1  # integer counts: below it means exactly 0
    for step in config["StepAdjustments"]:
        assert step["MetricIntervalUpperBound"] == 0 and "MetricIntervalLowerBound" not in step
    assert alarm["EvaluationPeriods"] == {"Ref": "WorkerIdleMinutes"}
    stats = [q["MetricStat"] for q in alarm["Metrics"] if "MetricStat" in q]
    for queue in QUEUES:  # nothing visible and nothing in flight in either queue
        assert any(_queue_metric(s, "ApproximateNumberOfMessagesVisible", queue) for s in stats), queue
        assert any(_queue_metric(s, "ApproximateNumberOfMessagesNotVisible", queue) for s in stats), queue


@pytest.mark.parametrize("dlq", ["JobsDeadLetterQueue", "HighPriorityJobsDeadLetterQueue"])
def test_dead_letter_queue_has_an_alarm(dlq: str) -> None:
    (alarm,) = [
        a["Properties"]
        for a in _resources("AWS::CloudWatch::Alarm").values()
        if a["Properties"].get("Dimensions") == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}]
    ]
    assert alarm["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"


# ---------------------------------------------------------------- data plane: encryption, TTL, redrive


def test_every_queue_is_encrypted() -> None:
    queues = _resources("AWS::SQS::Queue")
    assert set(queues) == {
        "JobsQueue",
        "JobsDeadLetterQueue",
        "HighPriorityJobsQueue",
        "HighPriorityJobsDeadLetterQueue",
        "JobEventsQueue",
    }
    for props in (q["Properties"] for q in queues.values()):
        assert props.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in props


@pytest.mark.parametrize(
    ("queue", "dlq"),
    [("JobsQueue", "JobsDeadLetterQueue"), ("HighPriorityJobsQueue", "HighPriorityJobsDeadLetterQueue")],
)
def test_job_queue_redrives_to_the_dlq_and_long_polls(queue: str, dlq: str) -> None:
    props = _props(queue)
    assert props["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": [dlq, "Arn"]},
        "maxReceiveCount": {"Ref": "MaxReceiveCount"},
    }
    assert props["ReceiveMessageWaitTimeSeconds"] == 20
    assert props["MessageRetentionPeriod"] == {"Ref": "QueueRetentionSeconds"}
    # The queue's visibility and the worker's lease are one parameter, well above a batch.
    assert props["VisibilityTimeout"] == {"Ref": "QueueVisibilityTimeout"}
    worker_env = tpl.container_environment(_cfn(), "WorkerTaskDefinition")
    assert worker_env["TWOPASS_VISIBILITY_TIMEOUT_SECONDS"] == {"Ref": "QueueVisibilityTimeout"}
    assert int(_param_default("QueueVisibilityTimeout")) >= Settings().visibility_timeout_seconds
    assert _props(dlq)["MessageRetentionPeriod"] == 1209600
    assert _props(dlq)["MaximumMessageSize"] == props["MaximumMessageSize"]  # a dead letter always fits


def test_job_table_is_on_demand_encrypted_recoverable_and_expires() -> None:
    props = _props("JobsTable")
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]


def test_payload_bucket_is_private_encrypted_and_expires() -> None:
    props = _props("PayloadBucket")
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in {"AES256", "aws:kms"}
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in
               ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))  # fmt: skip
    (expire,) = props["LifecycleConfiguration"]["Rules"]
    assert expire["Status"] == "Enabled"
    assert expire["Prefix"] == "payloads/"
    assert expire["ExpirationInDays"] == {"Ref": "PayloadRetentionDays"}
    # A payload must outlive the message that points at it.
    assert int(_param_default("PayloadRetentionDays")) * 86400 > int(_param_default("QueueRetentionSeconds"))


def test_log_groups_are_encrypted_and_expire() -> None:
    groups = _resources("AWS::Logs::LogGroup")
    assert {"ApiAccessLogGroup", "ApiExecutionLogGroup", "ApiFunctionLogGroup", "WorkerLogGroup"} <= set(groups)
    assert _props("ApiFunction")["LoggingConfig"]["LogGroup"] == {"Ref": "ApiFunctionLogGroup"}
    for g in groups.values():
        assert g["Properties"]["KmsKeyId"] == {"Fn::GetAtt": ["LogsKey", "Arn"]}
        assert g["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert _props("LogsKey")["EnableKeyRotation"] is True


def test_worker_image_repository_is_scanned_immutable_and_encrypted() -> None:
    props = _props("WorkerRepository")
    assert props["ImageTagMutability"] == "IMMUTABLE"
    assert props["ImageScanningConfiguration"] == {"ScanOnPush": True}
    assert props["EncryptionConfiguration"]["EncryptionType"] == "KMS"


# ---------------------------------------------------------------- API


def test_api_is_rest_with_keys_throttling_access_logs_and_tracing() -> None:
    assert _cfn()["Resources"]["Api"]["Type"] == "AWS::ApiGateway::RestApi"
    body = _props("Api")["Body"]
    # The exact image types beside the wildcard are for `sam local` (tests/infra/test_sam_local.py).
    assert body["x-amazon-apigateway-binary-media-types"][:2] == ["image/*", "application/octet-stream"]
    key = {"Fn::If": ["RequireApiKey", [{"api_key": []}], []]}
    # AuthMode cognito adds the user pool's authorizer (tests/infra/test_template_auth.py).
    user = {"Fn::If": ["RequireApiKey", [{"api_key": [], "user_pool": []}], [{"user_pool": []}]]}
    keyed = {"Fn::If": ["UseCognito", user, key]}
    docs = {"Fn::If": ["DocsNeedApiKey", [{"api_key": []}], []]}
    for path, ops in body["paths"].items():
        for method, op in ops.items():
            assert "x-amazon-apigateway-integration" in op, (path, method)
            if method == "options":  # CORS preflights, answered by API Gateway without a key
                continue
            # Liveness and readiness probes are open: /health and the Open Inference Protocol's two; the demo page.
            probe = path in ("/health", "/v2/health/live", "/v2/health/ready") or path.split("/")[1] == "demo"
            expected = [] if probe else docs if path.split("/")[1] in ("docs", "openapi.json") else keyed
            assert op["security"] == expected, (path, method)
    assert body["components"]["securitySchemes"]["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    assert _param_default("ApiKeyRequired") == "true"
    stage = _props("ApiStage")
    assert stage["TracingEnabled"] is True
    assert stage["AccessLogSetting"]["DestinationArn"] == {"Fn::GetAtt": ["ApiAccessLogGroup", "Arn"]}
    (settings,) = stage["MethodSettings"]
    assert settings["ThrottlingRateLimit"] == {"Ref": "ApiThrottleRateLimit"}
    assert settings["ThrottlingBurstLimit"] == {"Ref": "ApiThrottleBurstLimit"}
    assert _props("ApiUsagePlanKey")["KeyId"] == {"Ref": "ApiApiKey"}


def test_usage_plan_throttle_follows_the_parameters() -> None:
    # SAM resolves the usage plan's parameters while it transforms (CloudFormation runs the
    # transform with the stack's parameter values), so check it with non-default ones.
    cfn = tpl.transform(tpl.load(), {"ApiThrottleRateLimit": "7", "ApiThrottleBurstLimit": "9"})
    throttle = cfn["Resources"]["ApiUsagePlan"]["Properties"]["Throttle"]
    assert {k: int(v) for k, v in throttle.items()} == {"RateLimit": 7, "BurstLimit": 9}


def test_api_function_concurrency_is_parameterised() -> None:
    fn = _props("ApiFunction")
    assert fn["ReservedConcurrentExecutions"] == {
        "Fn::If": ["HasReservedConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]
    }
    assert fn["MemorySize"] == {"Ref": "ApiMemorySize"}
    assert fn["Timeout"] == {"Ref": "ApiTimeout"}
    alias = _props("ApiFunctionAliaslive")
    assert alias["ProvisionedConcurrencyConfig"]["Fn::If"][0] == "HasProvisionedConcurrency"


def test_waiting_reads_are_capped_by_default_below_the_accounts_concurrency() -> None:
    """?wait= holds an execution per waiting read: by default the template caps what waits can hold."""
    from twopass.api.routes.jobs import WAIT_MAX, wait_limit

    env = tpl.function_environment(_cfn(), "ApiFunction")
    assert env["TWOPASS_WAIT_CONCURRENCY"] == {"Ref": "ApiWaitConcurrency"}
    assert env["TWOPASS_API_RATE_LIMIT"] == {"Ref": "ApiThrottleRateLimit"}
    cap, rate, burst = (int(_param_default(p)) for p in ("ApiWaitConcurrency", "ApiThrottleRateLimit",
                                                         "ApiThrottleBurstLimit"))  # fmt: skip
    assert cap > 0, "waits must be capped unless the operator says otherwise"
    longest = wait_limit(Settings(wait_concurrency=cap, api_rate_limit=rate))
    assert 1 <= longest < WAIT_MAX
    # Waits at the full rate, plus one burst, stay well under the default account limit (1,000).
    assert rate * longest + burst <= 0.5 * 1000
    # Uncapped, the same rate of full waits would hold the whole account.
    assert rate * wait_limit(Settings()) >= 1000


# ---------------------------------------------------------------- env var contract with twopass.config


def test_worker_container_env_is_exactly_what_settings_reads() -> None:
    env = tpl.container_environment(_cfn(), "WorkerTaskDefinition")
    unknown = {k for k in env if k not in SETTINGS_ENV and not RUNTIME_ENV.match(k)}
    assert unknown == set()
    required = {"TWOPASS_QUEUE_URL", "TWOPASS_TABLE_NAME", "TWOPASS_SLOW_MODEL", "TWOPASS_PROVIDERS",
                "TWOPASS_MAX_BATCH_SIZE", "TWOPASS_MAX_WAIT_MS", "TWOPASS_VISIBILITY_TIMEOUT_SECONDS",
                "TWOPASS_JOB_TTL_DAYS", "ORT_DISABLE_TELEMETRY", "AWS_REGION"}  # fmt: skip
    assert required <= set(env)
    assert env["TWOPASS_QUEUE_URL"] == {"Ref": "JobsQueue"}
    assert env["TWOPASS_HIGH_PRIORITY_QUEUE_URL"] == {"Ref": "HighPriorityJobsQueue"}
    assert env["TWOPASS_NORMAL_SHARE"] == {"Ref": "WorkerNormalShare"}
    assert 0 < float(_param_default("WorkerNormalShare")) < 1
    assert env["TWOPASS_TABLE_NAME"] == {"Ref": "JobsTable"}
    bundled = {"Fn::Sub": "/opt/models/efficientnet-lite2-${WorkerModelPrecision}.onnx"}
    assert env["TWOPASS_SLOW_MODEL"] == {"Fn::If": ["SlowFromS3", {"Ref": "SlowModel"}, bundled]}
    # Every precision the parameter allows is a model the image bakes in (layers/models/slow/).
    precisions = tpl.load()["Parameters"]["WorkerModelPrecision"]["AllowedValues"]
    for precision in precisions:
        assert (REPO_ROOT / "layers/models/slow" / f"efficientnet-lite2-{precision}.onnx").is_file()
    assert env["TWOPASS_PROVIDERS"] == "cuda,cpu"
    assert env["ORT_DISABLE_TELEMETRY"] == "1"


def test_api_function_env_is_read_by_settings() -> None:
    env = tpl.function_environment(_cfn(), "ApiFunction")
    unknown = {k for k in env if k not in SETTINGS_ENV and not RUNTIME_ENV.match(k)}
    assert unknown == set()
    assert env["TWOPASS_QUEUE_URL"] == {"Ref": "JobsQueue"}
    assert env["TWOPASS_TABLE_NAME"] == {"Ref": "JobsTable"}


def test_both_sides_agree_on_shared_settings() -> None:
    worker = tpl.container_environment(_cfn(), "WorkerTaskDefinition")
    api = tpl.function_environment(_cfn(), "ApiFunction")
    for name in ("TWOPASS_QUEUE_URL", "TWOPASS_HIGH_PRIORITY_QUEUE_URL", "TWOPASS_TABLE_NAME", "TWOPASS_JOB_TTL_DAYS",
                 "TWOPASS_LOG_LEVEL"):  # fmt: skip
        assert worker[name] == api[name], name


# ---------------------------------------------------------------- IAM


def _statements() -> list[tuple[str, str, dict[str, Any]]]:
    """(logical id, where, statement) for every policy document in the transformed template."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for logical_id, res in _cfn()["Resources"].items():
        props = res.get("Properties", {})
        docs: list[tuple[str, Any]] = []
        if res["Type"] == "AWS::IAM::Role":
            docs += [(p["PolicyName"], p["PolicyDocument"]) for p in props.get("Policies", [])]
        elif res["Type"] in {"AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"}:
            docs.append(("policy", props["PolicyDocument"]))
        elif res["Type"] == "AWS::KMS::Key":
            docs.append(("key policy", props["KeyPolicy"]))
        elif res["Type"] in {"AWS::SQS::QueuePolicy", "AWS::S3::BucketPolicy"}:
            docs.append(("resource policy", props["PolicyDocument"]))
        for where, doc in docs:
            found += [(logical_id, where, s) for s in _as_list(doc["Statement"])]
    return found


#: Statements allowed to use ``Resource: "*"``, with the reason (also written in the template).
STAR_RESOURCES = {
    ("WorkerExecutionRole", "EcrLogin"): "ecr:GetAuthorizationToken has no resource-level permission",
    ("LogsKey", "AccountAdministersTheKey"): "in a key policy, * is the key itself",
    ("LogsKey", "CloudWatchLogsEncryptsThisAccountsLogGroups"): "in a key policy, * is the key itself",
    ("LogsKey", "CloudWatchAlarmsPublishToTheAlarmTopic"): "in a key policy, * is the key itself",
}


def test_no_wildcard_actions() -> None:
    statements = _statements()
    assert statements
    for logical_id, where, s in statements:
        assert "NotAction" not in s, (logical_id, where)
        for action in _as_list(s.get("Action", [])):
            assert isinstance(action, str), (logical_id, where, action)
            assert action != "*" and not action.endswith(":*"), (logical_id, where, action)
            assert "*" not in action, (logical_id, where, action)


def test_star_resources_are_allow_listed_with_a_reason() -> None:
    starred = {
        (logical_id, s.get("Sid", where))
        for logical_id, where, s in _statements()
        if "*" in _as_list(s.get("Resource", []))
    }
    assert starred == set(STAR_RESOURCES)
    for logical_id, _sid in starred:
        metadata = _source()["Resources"][logical_id].get("Metadata", {})
        assert "Reason" in metadata and "*" in metadata["Reason"], logical_id


def _role_statements(role: str) -> list[dict[str, Any]]:
    return [s for logical_id, _, s in _statements() if logical_id == role]


def test_worker_task_role_is_exactly_what_the_worker_calls() -> None:
    by_resource: dict[str, set[str]] = {}
    for s in _role_statements("WorkerTaskRole"):
        assert s["Effect"] == "Allow"
        for resource in _as_list(s["Resource"]):
            by_resource.setdefault(json.dumps(resource), set()).update(_as_list(s["Action"]))
    consume = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes",
               "sqs:SendMessage"}  # fmt: skip
    assert by_resource == {
        json.dumps({"Fn::GetAtt": ["JobsQueue", "Arn"]}): consume,
        json.dumps({"Fn::GetAtt": ["HighPriorityJobsQueue", "Arn"]}): consume,
        json.dumps({"Fn::GetAtt": ["JobsDeadLetterQueue", "Arn"]}): {"sqs:GetQueueUrl", "sqs:ReceiveMessage"},
        json.dumps({"Fn::GetAtt": ["HighPriorityJobsDeadLetterQueue", "Arn"]}): {"sqs:GetQueueUrl", "sqs:ReceiveMessage"},
        json.dumps({"Fn::GetAtt": ["JobsTable", "Arn"]}): {"dynamodb:UpdateItem", "dynamodb:GetItem"},
        json.dumps({"Fn::Sub": "${JobsTable.Arn}/index/pending-created"}): {"dynamodb:Query"},
        json.dumps({"Fn::Sub": "${PayloadBucket.Arn}/payloads/*"}): {"s3:GetObject", "s3:DeleteObject", "s3:PutObject"},
        json.dumps({"Fn::GetAtt": ["PayloadBucket", "Arn"]}): {"s3:ListBucket"},
        json.dumps({"Fn::GetAtt": ["JobEventsBus", "Arn"]}): {"events:PutEvents"},
    }  # fmt: skip
    assert "ManagedPolicyArns" not in _props("WorkerTaskRole")


def test_worker_execution_role_only_pulls_its_image_and_writes_its_logs() -> None:
    granted = {
        (action, json.dumps(resource))
        for s in _role_statements("WorkerExecutionRole")
        for action in _as_list(s["Action"])
        for resource in _as_list(s["Resource"])
    }
    repo = json.dumps({"Fn::GetAtt": ["WorkerRepository", "Arn"]})
    logs = json.dumps({"Fn::GetAtt": ["WorkerLogGroup", "Arn"]})
    assert granted == {
        ("ecr:GetAuthorizationToken", json.dumps("*")),
        ("ecr:BatchCheckLayerAvailability", repo),
        ("ecr:BatchGetImage", repo),
        ("ecr:GetDownloadUrlForLayer", repo),
        ("logs:CreateLogStream", logs),
        ("logs:PutLogEvents", logs),
        # The callback signing secret, injected as TWOPASS_CALLBACK_SECRET when the task starts.
        ("secretsmanager:GetSecretValue", json.dumps({"Ref": "CallbackSecret"})),
    }


def test_api_function_role_only_touches_the_job_queue_and_table() -> None:
    resources = {json.dumps(r) for s in _role_statements("ApiFunctionRole") for r in _as_list(s["Resource"])}
    assert resources == {
        json.dumps({"Fn::GetAtt": ["JobsTable", "Arn"]}),
        json.dumps({"Fn::GetAtt": ["JobsQueue", "Arn"]}),
        json.dumps({"Fn::GetAtt": ["HighPriorityJobsQueue", "Arn"]}),
        json.dumps({"Fn::Sub": "${PayloadBucket.Arn}/payloads/*"}),
        # GET /jobs reads the owner index; retry's HEAD needs ListBucket to see a missing image as 404.
        json.dumps({"Fn::Sub": "${JobsTable.Arn}/index/owner-created"}),
        json.dumps({"Fn::GetAtt": ["PayloadBucket", "Arn"]}),
        # Completion events of the final states the API writes.
        json.dumps({"Fn::GetAtt": ["JobEventsBus", "Arn"]}),
    }
    (listing,) = [s for s in _role_statements("ApiFunctionRole") if "s3:ListBucket" in _as_list(s["Action"])]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["payloads/*"]}}


@pytest.mark.parametrize("role", ["WorkerTaskRole", "WorkerExecutionRole"])
def test_ecs_roles_are_assumable_only_by_this_accounts_tasks(role: str) -> None:
    (statement,) = _props(role)["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}


# ---------------------------------------------------------------- outputs


def test_outputs() -> None:
    outputs = _cfn()["Outputs"]
    expected = {"ApiUrl", "ApiKeyId", "QueueUrl", "DeadLetterQueueUrl", "TableName", "EcrRepositoryUri",
                "ClusterName", "ServiceName"}  # fmt: skip
    assert expected <= set(outputs)
    assert outputs["QueueUrl"]["Value"] == {"Ref": "JobsQueue"}
    assert outputs["TableName"]["Value"] == {"Ref": "JobsTable"}
    assert outputs["EcrRepositoryUri"]["Value"] == {"Fn::GetAtt": ["WorkerRepository", "RepositoryUri"]}


def test_data_plane_for_the_local_stack_is_only_queues_the_table_and_the_bucket() -> None:
    plane = tpl.data_plane(_cfn())
    assert set(plane["Resources"]) == {"JobsQueue", "JobsDeadLetterQueue", "HighPriorityJobsQueue",
                                       "HighPriorityJobsDeadLetterQueue", "JobsTable", "PayloadBucket",
                                       "JobEventsBus", "JobEventsRule", "JobEventsQueue"}  # fmt: skip
    assert {"QueueUrl", "DeadLetterQueueUrl", "HighPriorityQueueUrl", "HighPriorityDeadLetterQueueUrl", "TableName",
            "PayloadBucketName"} <= set(plane["Outputs"])  # fmt: skip
    # The emulator requires a value for every parameter: all have defaults.
    assert all("Default" in p for p in plane["Parameters"].values())
