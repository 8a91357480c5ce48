"""cfn-lint on template.yaml and on its Serverless transform (the transform catches dangling
references and SAM-only mistakes that linting the source alone misses)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from twopass.local import template as tpl

#: (rule id, logical id) → why the finding is accepted. Keep it short and justified.
ACCEPTED = {
    ("W3005", "ApiUsagePlan"): "SAM generates DependsOn: Api next to a Ref to it (not ours to change)",
    ("W3005", "ApiUsagePlanKey"): "SAM generates DependsOn: ApiApiKey next to a Ref to it (not ours to change)",
}

#: Non-default parameters that flip every condition (existing VPC, keys off, concurrency on).
FLIPPED = {
    "VpcId": "vpc-0123456789abcdef0",
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
    "ApiKeyRequired": "false",
    "ApiReservedConcurrency": "50",
    "ApiProvisionedConcurrency": "2",
    "ConfigureApiGatewayAccount": "false",
    "AlarmTopicArn": "arn:aws:sns:us-east-1:123456789012:alerts",
}


def _lint(path: Path) -> list[tuple[str, str, str]]:
    from cfnlint.api import ManualArgs, lint_file

    matches = lint_file(path, config=ManualArgs(regions=["us-east-1"]))
    findings = []
    for m in matches:
        rule = m.rule.id
        if rule.startswith("I"):  # informational
            continue
        path_parts = list(getattr(m, "path", None) or [])
        logical = str(path_parts[1]) if len(path_parts) > 1 and path_parts[0] == "Resources" else ""
        findings.append((rule, logical, f"{m.filename}:{m.linenumber}: {rule} {m.message}"))
    return findings


def _unaccepted(findings: list[tuple[str, str, str]]) -> list[str]:
    return [text for rule, logical, text in findings if (rule, logical) not in ACCEPTED]


@cache
def _transformed(parameters: tuple[tuple[str, str], ...] = ()) -> dict:
    return tpl.transform(tpl.load(), dict(parameters))


def test_template_yaml_is_cfn_lint_clean() -> None:
    assert _unaccepted(_lint(tpl.TEMPLATE)) == []


@pytest.mark.parametrize("parameters", [{}, FLIPPED], ids=["defaults", "flipped-conditions"])
def test_transformed_template_is_cfn_lint_clean(tmp_path: Path, parameters: dict[str, str]) -> None:
    out = tmp_path / "transformed.json"
    out.write_text(json.dumps(_transformed(tuple(sorted(parameters.items()))), indent=1, default=str))
    findings = _lint(out)
    assert _unaccepted(findings) == []
    # Drop an entry from ACCEPTED once SAM stops producing it, so the list never hides new issues.
    assert set(ACCEPTED) <= {(rule, logical) for rule, logical, _ in findings}
