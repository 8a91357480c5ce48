"""Create the template's data plane in an emulator and resolve the environment the template gives
the API function: the one path by which the local stack and the tests get their resources.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twopass.local import template as tpl

API_FUNCTION = "ApiFunction"
#: What differs on a laptop from Lambda: model paths come from the checkout, not from /opt.
LOCAL_OVERRIDES = frozenset({"TWOPASS_FAST_MODEL", "TWOPASS_SLOW_MODEL"})

ClientFactory = Callable[[str], Any]


@dataclass(frozen=True)
class Provisioned:
    """What CloudFormation created and the environment the template gives the API function."""

    stack_name: str
    resources: dict[str, str]
    outputs: dict[str, str]
    api_env: dict[str, str]
    template: dict[str, Any]
    #: The variables of ``api_env`` whose value names a resource the stack created (queue URLs, table,
    #: bucket, event bus, generated secrets): the stack's own wiring, which a setting in the shell
    #: must not point elsewhere (the rest are the template's defaults, which the shell may override).
    wiring: frozenset[str] = frozenset()


def _physical_ids(
    cloudformation: Any, stack_name: str, cfn: Mapping[str, Any], outputs: Mapping[str, str]
) -> dict[str, str]:
    """Each created resource's physical id, with names for what moto leaves without one."""
    resources: dict[str, str] = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
        # moto gives an event bus no physical id (its name is an output: JobEventsBusName).
        if "LogicalResourceId" in r and "PhysicalResourceId" in r
    }
    # A resource moto creates without a physical id (the event bus) gets its name from the output naming it.
    for key, output in cfn.get("Outputs", {}).items():
        value = output.get("Value")
        if isinstance(value, dict) and "Fn::GetAtt" in value and key in outputs:
            logical_id, attribute = value["Fn::GetAtt"]
            if attribute == "Name":
                resources.setdefault(logical_id, str(outputs[key]))

    # moto's CloudFormation makes no secrets: a dynamic reference to one (the cursor key) resolves
    # to a random stand-in of this stack's, as good a key locally as the generated one on AWS.
    for logical_id, resource in cfn["Resources"].items():
        if resource.get("Type") == "AWS::SecretsManager::Secret":
            resources.setdefault(logical_id, f"local-{stack_name}-{logical_id}-{secrets.token_hex(16)}")
    return resources


def provision(
    client: ClientFactory,
    *,
    stack_name: str = "twopass-local",
    template_path: Path = tpl.TEMPLATE,
    parameters: Mapping[str, str] | None = None,
) -> Provisioned:
    """Transform ``template_path`` offline and create its queues, tables and buckets as a stack."""
    parameters = dict(parameters or {})
    cfn = tpl.transform_file(template_path, parameters)
    cloudformation = client("cloudformation")
    cloudformation.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(tpl.data_plane(cfn)),
        Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()],
    )
    stack = cloudformation.describe_stacks(StackName=stack_name)["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise RuntimeError(f"stack {stack_name} is {stack['StackStatus']}: {stack.get('StackStatusReason')}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    resources = _physical_ids(cloudformation, stack_name, cfn, outputs)

    def lookup(logical_id: str, attribute: str | None) -> str:
        if logical_id not in resources:
            raise KeyError(f"{logical_id} is not created locally")
        physical = resources[logical_id]
        if attribute in (None, "Name"):
            return physical
        if attribute == "Arn":
            if physical.startswith("http"):
                attrs = client("sqs").get_queue_attributes(QueueUrl=physical, AttributeNames=["QueueArn"])
                return str(attrs["Attributes"]["QueueArn"])
            with contextlib.suppress(Exception):
                return str(client("dynamodb").describe_table(TableName=physical)["Table"]["TableArn"])
            return f"arn:aws:s3:::{physical}"
        if attribute == "QueueName":
            return physical.rsplit("/", 1)[-1]
        raise KeyError(f"GetAtt {logical_id}.{attribute} is not supported locally")

    params = tpl.parameter_defaults(cfn, parameters)
    variables: dict[str, Any] = {}
    wiring: set[str] = set()
    for name, node in tpl.function_environment(cfn, API_FUNCTION).items():
        # Resolved one by one, noting which looked up a created resource (only the branch of an
        # Fn::If that is taken counts: JwtIssuer is a parameter unless the stack makes a user pool).
        looked_up: list[str] = []

        def recording(logical_id: str, attribute: str | None, seen: list[str] = looked_up) -> str:
            seen.append(logical_id)
            return lookup(logical_id, attribute)

        variables[name] = tpl.resolve(node, recording, params, cfn.get("Conditions"))
        if looked_up:
            wiring.add(name)
    # Empty values mean "the code's default" (the template declares them so `sam local` can override
    # them): dropped, so an empty AWS_ENDPOINT_URL never hides the emulator's.
    api_env = {k: str(v) for k, v in variables.items() if k not in LOCAL_OVERRIDES and str(v) != ""}
    return Provisioned(stack_name, resources, outputs, api_env, cfn, frozenset(wiring & set(api_env)))
