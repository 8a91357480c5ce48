"""samconfig.toml: the dev and prod environments deploy valid parameters of template.yaml, one stack
each, stating only what differs from the template's defaults."""

from __future__ import annotations

import re
import shlex
import tomllib
from functools import cache
from typing import Any

import pytest

from twopass.config import REPO_ROOT
from twopass.local import template as tpl

ENVIRONMENTS = ("dev", "prod")
#: Kept by the stack and set by infra/release.py, never by samconfig.toml (see its header).
RELEASE_OWNED = ("ImageTag", "AlarmEmail", "ConfigureApiGatewayAccount")


@cache
def _config() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "samconfig.toml").read_text())


def _overrides(env: str) -> dict[str, str]:
    raw = _config()[env]["deploy"]["parameters"]["parameter_overrides"]
    pairs = raw if isinstance(raw, list) else shlex.split(raw)
    return dict(p.split("=", 1) for p in pairs)


def test_environments_exist_with_their_own_stacks() -> None:
    config = _config()
    assert config["version"] == 0.1
    names = {env: config[env]["global"]["parameters"]["stack_name"] for env in ENVIRONMENTS}
    assert names["prod"] != names["dev"]
    for env in ENVIRONMENTS:
        deploy = config[env]["deploy"]["parameters"]
        assert "CAPABILITY_IAM" in deploy["capabilities"]
        assert deploy["resolve_s3"] is True
        assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", config[env]["global"]["parameters"]["region"])
    assert config["prod"]["deploy"]["parameters"]["confirm_changeset"] is True
    # [default] is for sam build/validate/local only: a bare `sam deploy` names no stack.
    assert "deploy" not in config["default"]
    assert "stack_name" not in config["default"]["global"]["parameters"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_parameter_overrides_are_valid_template_parameters(env: str) -> None:
    parameters = tpl.load()["Parameters"]
    overrides = _overrides(env)
    assert overrides["Stage"] in {"dev", "prod"}
    for name, value in overrides.items():
        assert name in parameters, f"{env}: {name} is not a template parameter"
        spec = parameters[name]
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], (env, name, value)
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), (env, name, value)
        if spec["Type"] == "Number":
            number = float(value)
            assert number >= spec.get("MinValue", float("-inf")), (env, name, value)
            assert number <= spec.get("MaxValue", float("inf")), (env, name, value)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overrides_transform(env: str) -> None:
    cfn = tpl.transform(tpl.load(), _overrides(env))
    assert "WorkerService" in cfn["Resources"]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_release_path_owns_the_image_tag_alarm_email_and_account_logging_role(env: str) -> None:
    # A tag here would put an old image back on the next plain `sam deploy --config-env`.
    assert not set(RELEASE_OWNED) & set(_overrides(env))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overrides_state_only_what_differs_from_the_template(env: str) -> None:
    """A value equal to the template's default would silently disagree once the default changes."""
    parameters = tpl.load()["Parameters"]
    same = [
        name
        for name, value in _overrides(env).items()
        if name != "Stage" and str(parameters[name].get("Default", "")) == value
    ]
    assert same == []


def test_the_header_says_what_is_off_by_default_as_the_template_does() -> None:
    parameters = tpl.load()["Parameters"]
    header = (REPO_ROOT / "samconfig.toml").read_text()
    assert "The cascade, the result cache and slow-model rollouts are off by default" in header
    for name in ("CascadeThreshold", "ResultCache", "CandidateSlowModel", "RolloutMode"):
        assert str(parameters[name]["Default"]) in ("0", "false", ""), name
    agreement = parameters["FastSlowAgreementAlarmThreshold"]["Default"]
    assert f"the agreement alarm is\n# on (FastSlowAgreementAlarmThreshold={agreement:g}" in header
