"""template.yaml, offline: parse it, run the Serverless transform, pick what the emulator can create,
and resolve the environment the template gives a function or a task.

Everything the local stack and the tests create comes from here, so code and template cannot drift.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from twopass.config import REPO_ROOT

TEMPLATE = REPO_ROOT / "template.yaml"
ARTIFACT_BUCKET = "twopass-local-artifacts"

#: Resource types the local emulator creates; the rest (API Gateway, Lambda, ECS, alarms, bucket
#: policies, which moto's CloudFormation cannot create) is played by local processes or checked on
#: the transformed template instead.
#: The completion-event bus and its example rule too (moto delivers PutEvents to a rule's SQS target);
#: not the queue policy, which moto's CloudFormation cannot create (nor does it need one to deliver).
DATA_PLANE_TYPES = frozenset(
    {"AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::S3::Bucket", "AWS::Events::EventBus", "AWS::Events::Rule"}
)

_LOCAL_PATH_PROPS = {
    "AWS::Serverless::Function": "CodeUri",
    "AWS::Serverless::LayerVersion": "ContentUri",
}


def load(path: Path = TEMPLATE) -> dict[str, Any]:
    """Parse a SAM/CloudFormation YAML template, short-form intrinsics (``!Ref``…) included."""
    from samtranslator.yaml_helper import yaml_parse

    parsed: dict[str, Any] = yaml_parse(path.read_text())
    return parsed


class _StubPolicyLoader:
    """The transform only needs AWS managed policy ARNs for names it cannot resolve; we use none."""

    def load(self) -> dict[str, str]:
        return {}


def transform(
    template: Mapping[str, Any] | None = None,
    parameters: Mapping[str, Any] | None = None,
    region: str = "us-east-1",
) -> dict[str, Any]:
    """Run the Serverless transform offline, as ``sam package`` + CloudFormation would.

    Local ``CodeUri``/``ContentUri`` paths become ``s3://`` artefact URIs first, like ``sam package``.
    """
    from samtranslator.translator.transform import transform as sam_transform

    # The translator logs feature-toggle and metrics chatter at WARNING on every run.
    logging.getLogger("samtranslator").setLevel(logging.ERROR)

    source = copy.deepcopy(dict(template if template is not None else load()))
    for resource in source.get("Resources", {}).values():
        prop = _LOCAL_PATH_PROPS.get(resource.get("Type", ""))
        value = resource.get("Properties", {}).get(prop) if prop else None
        if isinstance(value, str) and not value.startswith("s3://"):
            resource["Properties"][prop] = f"s3://{ARTIFACT_BUCKET}/{value.strip('/')}.zip"
    previous = os.environ.get("AWS_DEFAULT_REGION")
    os.environ["AWS_DEFAULT_REGION"] = region  # the translator reads the region from boto3's session
    try:
        result: dict[str, Any] = sam_transform(source, dict(parameters or {}), _StubPolicyLoader())
    finally:
        if previous is None:
            os.environ.pop("AWS_DEFAULT_REGION", None)
        else:
            os.environ["AWS_DEFAULT_REGION"] = previous
    return result


@lru_cache(maxsize=8)
def _transformed(path: Path, mtime: float, parameters: tuple[tuple[str, str], ...], region: str) -> str:
    return json.dumps(transform(load(path), dict(parameters), region))


def transform_file(
    path: Path = TEMPLATE, parameters: Mapping[str, Any] | None = None, region: str = "us-east-1"
) -> dict[str, Any]:
    """:func:`transform` of a template file, cached per file version (tests provision it often)."""
    key = tuple(sorted((k, str(v)) for k, v in (parameters or {}).items()))
    result: dict[str, Any] = json.loads(_transformed(path, path.stat().st_mtime, key, region))
    return result


def _refs(node: Any) -> set[str]:
    """Logical ids a fragment refers to (Ref, GetAtt, ${X} in Sub)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value)
            elif key == "Fn::GetAtt":
                target = value[0] if isinstance(value, list) else str(value).split(".")[0]
                found.add(target)
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value

                found.update(m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text))
                if isinstance(value, list):
                    found |= _refs(value[1])
            else:
                found |= _refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= _refs(item)
    return found


def data_plane(cfn: Mapping[str, Any], types: frozenset[str] = DATA_PLANE_TYPES) -> dict[str, Any]:
    """The part of a transformed template the emulator can create: queues, tables, buckets.

    Outputs and conditions are kept where everything they reference is kept.
    """
    resources = {k: v for k, v in cfn["Resources"].items() if v["Type"] in types}
    keep = set(resources) | set(cfn.get("Parameters", {})) | {r for r in _pseudo()}
    keep |= set(cfn.get("Conditions", {}))
    outputs = {k: v for k, v in cfn.get("Outputs", {}).items() if _refs(v) <= keep}
    out: dict[str, Any] = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": copy.deepcopy(cfn.get("Parameters", {})),
        "Resources": copy.deepcopy(resources),
        "Outputs": copy.deepcopy(outputs),
    }
    if cfn.get("Conditions"):
        out["Conditions"] = copy.deepcopy(cfn["Conditions"])
    return out


def _pseudo() -> set[str]:
    return {"AWS::Region", "AWS::AccountId", "AWS::StackName", "AWS::URLSuffix", "AWS::Partition", "AWS::NoValue"}


Resolver = Callable[[str, str | None], str]


def resolve(
    node: Any, lookup: Resolver, parameters: Mapping[str, str], conditions: Mapping[str, Any] | None = None
) -> Any:
    """Evaluate Ref / GetAtt / Sub / Join / Split / Select / GetAZs / If in ``node``; ``lookup(logical_id, attribute)``.

    ``conditions`` is the template's ``Conditions`` section, for ``Fn::If``.
    """

    def again(child: Any) -> Any:
        return resolve(child, lookup, parameters, conditions)

    if isinstance(node, dict) and len(node) == 1:
        ((key, value),) = node.items()
        if key == "Ref":
            return parameters[value] if value in parameters else lookup(value, None)
        if key == "Fn::GetAtt":
            target, attr = value if isinstance(value, list) else str(value).split(".", 1)
            return lookup(target, attr)
        if key == "Fn::If":
            name, when_true, when_false = value
            return again(when_true if condition(name, conditions or {}, parameters) else when_false)
        if key == "Fn::Sub":
            text, extra = (value[0], value[1]) if isinstance(value, list) else (value, {})

            def sub(match: re.Match[str]) -> str:
                name = match.group(1)
                if name in extra:
                    return str(again(extra[name]))
                if name in parameters:
                    return str(parameters[name])
                target, _, attr = name.partition(".")
                return lookup(target, attr or None)

            return re.sub(r"\$\{([^}!]+)\}", sub, text)
        if key == "Fn::Join":
            sep, items = value
            return sep.join(str(again(i)) for i in items)
        if key == "Fn::Split":
            sep, text = value
            return str(again(text)).split(sep)
        if key == "Fn::Select":
            index, items = value
            return again(items)[int(again(index))]
        if key == "Fn::GetAZs":
            # Locally any region has six zones, named as AWS names them (the subnets' only use of it).
            region = str(again(value) or parameters.get("AWS::Region", "us-east-1"))
            return [f"{region}{letter}" for letter in "abcdef"]
    if isinstance(node, dict):
        return {k: again(v) for k, v in node.items()}
    if isinstance(node, list):
        return [again(v) for v in node]
    return node


def condition(name: str, conditions: Mapping[str, Any], parameters: Mapping[str, str]) -> bool:
    """Evaluate one of the template's conditions against parameter values."""

    def value(node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return parameters[arg]
            if key == "Condition":
                return condition(arg, conditions, parameters)
            if key == "Fn::Equals":
                return str(value(arg[0])) == str(value(arg[1]))
            if key == "Fn::Not":
                return not value(arg[0])
            if key == "Fn::And":
                return all(value(a) for a in arg)
            if key == "Fn::Or":
                return any(value(a) for a in arg)
        return node

    return bool(value(conditions[name]))


def parameter_defaults(cfn: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> dict[str, str]:
    values = {k: str(v["Default"]) for k, v in cfn.get("Parameters", {}).items() if "Default" in v}
    values.update({k: str(v) for k, v in (overrides or {}).items()})
    values.setdefault("AWS::Region", os.environ.get("AWS_REGION", "us-east-1"))
    values.setdefault("AWS::AccountId", "123456789012")
    values.setdefault("AWS::URLSuffix", "amazonaws.com")
    values.setdefault("AWS::Partition", "aws")
    return values


def function_environment(cfn: Mapping[str, Any], logical_id: str) -> dict[str, Any]:
    """The unresolved ``Environment.Variables`` of a Lambda function in a transformed template."""
    props = cfn["Resources"][logical_id]["Properties"]
    return dict(props.get("Environment", {}).get("Variables", {}))


def container_environment(cfn: Mapping[str, Any], logical_id: str, container: str | None = None) -> dict[str, Any]:
    """The unresolved environment of a container in an ECS task definition."""
    definitions = cfn["Resources"][logical_id]["Properties"]["ContainerDefinitions"]
    chosen = next(d for d in definitions if container is None or d.get("Name") == container)
    return {e["Name"]: e["Value"] for e in chosen.get("Environment", [])}


def dumps(cfn: Mapping[str, Any]) -> str:
    return json.dumps(cfn, indent=1, default=str)
