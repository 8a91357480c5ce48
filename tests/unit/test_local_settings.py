"""The local stack's settings: a ``TWOPASS_*`` setting given in the shell wins over template.yaml's
default for the API and the workers, never over the names of the resources the stack created; the
``make run`` banner lists every setting that is not the code's default, secrets masked."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from twopass.config import Settings
from twopass.local.main import banner
from twopass.local.provision import Provisioned, provision
from twopass.local.services import (
    FROM_LOCAL,
    FROM_SHELL,
    FROM_TEMPLATE,
    LOCAL_FORCED,
    layered_environment,
)
from twopass.local.stack import DEFAULT_API_KEY, LocalStack

#: A template environment as provision resolves it: resource names (wiring) and defaults.
TEMPLATE_ENV = {
    "TWOPASS_QUEUE_URL": "http://emulator/queue/jobs",
    "TWOPASS_TABLE_NAME": "jobs-table",
    "TWOPASS_RESULT_CACHE": "false",
    "TWOPASS_CASCADE_THRESHOLD": "0",
    "TWOPASS_PROVIDERS": "cpu",
    "TWOPASS_DEMO": "false",
    "POWERTOOLS_SERVICE_NAME": "twopass-api",
    "POWERTOOLS_TRACE_DISABLED": "false",
}
WIRING = frozenset({"TWOPASS_QUEUE_URL", "TWOPASS_TABLE_NAME"})


def layered(
    shell: dict[str, str], api_key: str | None = None, overrides: dict[str, str] | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    env = layered_environment(shell, TEMPLATE_ENV, api_key, wiring=WIRING, overrides=overrides)
    return env.values, env.origins


# -- the merge rule ------------------------------------------------------------------------------


def test_without_the_shell_the_template_and_the_local_defaults_apply() -> None:
    values, origins = layered({"HOME": "/home/me"})
    assert values["TWOPASS_RESULT_CACHE"] == "false" and origins["TWOPASS_RESULT_CACHE"] == FROM_TEMPLATE
    assert values["TWOPASS_QUEUE_URL"] == "http://emulator/queue/jobs"
    # What the template leaves empty gets the local stack's default; the demo page is on locally.
    assert values["TWOPASS_CALLBACK_ALLOW_HTTP"] == "true" and origins["TWOPASS_CALLBACK_ALLOW_HTTP"] == FROM_LOCAL
    assert values["TWOPASS_DEMO"] == "true" and origins["TWOPASS_DEMO"] == FROM_LOCAL
    assert values["HOME"] == "/home/me"


def test_a_setting_in_the_shell_wins_over_the_template_default() -> None:
    values, origins = layered({"TWOPASS_RESULT_CACHE": "1", "TWOPASS_CASCADE_THRESHOLD": "0.62", "TWOPASS_TOP_K": "3"})
    assert values["TWOPASS_RESULT_CACHE"] == "1" and origins["TWOPASS_RESULT_CACHE"] == FROM_SHELL
    assert values["TWOPASS_CASCADE_THRESHOLD"] == "0.62"
    assert values["TWOPASS_TOP_K"] == "3" and origins["TWOPASS_TOP_K"] == FROM_SHELL
    # ... and over the local stack's own choices.
    values, _ = layered({"TWOPASS_DEMO": "false", "TWOPASS_PROVIDERS": "cuda?,cpu", "TWOPASS_CALLBACK_ALLOW_HTTP": "0"})
    assert values["TWOPASS_DEMO"] == "false"
    assert values["TWOPASS_PROVIDERS"] == "cuda?,cpu"
    assert values["TWOPASS_CALLBACK_ALLOW_HTTP"] == "0"
    # As Settings reads it: set but empty is unset, so the template's default stays.
    values, origins = layered({"TWOPASS_RESULT_CACHE": ""})
    assert values["TWOPASS_RESULT_CACHE"] == "false" and origins["TWOPASS_RESULT_CACHE"] == FROM_TEMPLATE


def test_the_shell_cannot_point_the_stack_at_other_resources() -> None:
    env = layered_environment(
        {"TWOPASS_QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/1/prod-jobs", "TWOPASS_TABLE_NAME": "prod"},
        TEMPLATE_ENV,
        wiring=WIRING,
    )
    assert env.values["TWOPASS_QUEUE_URL"] == "http://emulator/queue/jobs"
    assert env.values["TWOPASS_TABLE_NAME"] == "jobs-table"
    assert env.unused_from_shell == ("TWOPASS_QUEUE_URL", "TWOPASS_TABLE_NAME")


def test_the_api_key_the_forced_switches_and_the_stacks_own_overrides_come_last() -> None:
    shell = {"TWOPASS_API_KEYS": "from-the-shell", "POWERTOOLS_TRACE_DISABLED": "false", "TWOPASS_TOP_K": "3"}
    values, origins = layered(shell, api_key="k1", overrides={"TWOPASS_TOP_K": "7", "TWOPASS_POLL_WAIT_SECONDS": "1"})
    assert values["TWOPASS_API_KEYS"] == "k1" and origins["TWOPASS_API_KEYS"] == FROM_LOCAL
    # No X-Ray daemon or EMF collector on a laptop, whatever the template or the shell says.
    assert {k: values[k] for k in LOCAL_FORCED} == LOCAL_FORCED
    assert values["TWOPASS_TOP_K"] == "7" and values["TWOPASS_POLL_WAIT_SECONDS"] == "1"
    assert values["POWERTOOLS_SERVICE_NAME"] == "twopass-api"
    # Without a key of the stack's own the shell's stands.
    values, _ = layered(shell)
    assert values["TWOPASS_API_KEYS"] == "from-the-shell"


# -- what provision calls wiring ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def provisioned() -> Iterator[Provisioned]:
    from moto import mock_aws

    with mock_aws():
        yield provision(lambda service: boto3.client(service, region_name="us-east-1"))


def test_wiring_is_the_variables_that_name_a_created_resource(provisioned: Provisioned) -> None:
    assert provisioned.wiring == {
        "TWOPASS_QUEUE_URL",
        "TWOPASS_HIGH_PRIORITY_QUEUE_URL",
        "TWOPASS_TABLE_NAME",
        "TWOPASS_PAYLOAD_BUCKET",
        "TWOPASS_EVENT_BUS",
        "TWOPASS_CURSOR_SECRET",
    }
    # Parameters' defaults are not wiring: the shell may override them.
    assert {"TWOPASS_RESULT_CACHE", "TWOPASS_CASCADE_THRESHOLD", "TWOPASS_AUTH_MODE"} <= set(provisioned.api_env)
    assert not {"TWOPASS_RESULT_CACHE", "TWOPASS_CASCADE_THRESHOLD", "TWOPASS_AUTH_MODE"} & provisioned.wiring


def test_the_local_stack_gives_its_children_the_shells_settings(
    provisioned: Provisioned, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert provisioned.api_env["TWOPASS_RESULT_CACHE"] == "false"  # the template's default
    monkeypatch.setenv("TWOPASS_RESULT_CACHE", "1")
    monkeypatch.setenv("TWOPASS_QUEUE_URL", "http://127.0.0.1:9/elsewhere")
    stack = LocalStack(env={"TWOPASS_POLL_WAIT_SECONDS": "1"})
    stack.provisioned = provisioned
    env = stack.app_env()
    assert env["TWOPASS_RESULT_CACHE"] == "1"
    assert env["TWOPASS_QUEUE_URL"] == provisioned.resources["JobsQueue"]
    assert env["TWOPASS_POLL_WAIT_SECONDS"] == "1"
    assert env["AWS_ENDPOINT_URL"] == stack.endpoint_url
    assert Settings.from_env(env).result_cache is True


# -- the banner ------------------------------------------------------------------------------------


def settings_section(text: str) -> list[str]:
    lines = text.split("Settings not at their defaults", 1)[1].split("\nTry:", 1)[0].strip().splitlines()
    return [line.strip() for line in lines[1:]]


def test_not_default_compares_values_as_settings_reads_them() -> None:
    env = layered_environment(
        {
            "TWOPASS_TOP_K": "5",
            "TWOPASS_JOB_TTL_DAYS": "7.0",
            "TWOPASS_RESULT_CACHE": "yes",
            "TWOPASS_MAX_BACKLOG": "x",
        },
        {},
    )
    listed = {name: (value, origin) for name, value, origin in env.not_default()}
    assert "TWOPASS_TOP_K" not in listed and "TWOPASS_JOB_TTL_DAYS" not in listed  # the defaults, written out
    assert listed["TWOPASS_RESULT_CACHE"] == ("yes", FROM_SHELL)
    assert listed["TWOPASS_MAX_BACKLOG"] == ("x", FROM_SHELL)  # the services will refuse it: shown


def test_banner_lists_every_setting_not_at_its_default_with_secrets_masked(
    provisioned: Provisioned, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TWOPASS_RESULT_CACHE", "1")
    monkeypatch.setenv("TWOPASS_TOP_K", "5")  # the default: not listed
    monkeypatch.setenv("TWOPASS_FAST_MODEL", str(tmp_path / "packs" / "fast"))
    monkeypatch.setenv("TWOPASS_QUEUE_URL", "http://127.0.0.1:9/elsewhere")
    stack = LocalStack()
    stack.provisioned = provisioned
    lines = settings_section(banner(stack))
    listed = {line.split("=", 1)[0]: line for line in lines if line.startswith("TWOPASS_")}

    assert listed["TWOPASS_RESULT_CACHE"].split() == ["TWOPASS_RESULT_CACHE=1", "(shell)"]
    assert listed["TWOPASS_FAST_MODEL"].startswith(f"TWOPASS_FAST_MODEL={tmp_path / 'packs' / 'fast'} ")
    assert listed["TWOPASS_PROVIDERS"].split() == ["TWOPASS_PROVIDERS=cpu", "(template.yaml)"]
    assert listed["TWOPASS_DEMO"].split() == ["TWOPASS_DEMO=true", "(local", "stack)"]
    # The stack's own resources are not settings a user changed: the banner names them elsewhere.
    assert "TWOPASS_QUEUE_URL" not in listed and "TWOPASS_TABLE_NAME" not in listed
    assert stack.environment().values["TWOPASS_QUEUE_URL"] == provisioned.resources["JobsQueue"]
    assert "TWOPASS_TOP_K" not in listed and "TWOPASS_RESULT_CACHE_TTL_HOURS" not in listed
    for secret in ("TWOPASS_API_KEYS", "TWOPASS_CALLBACK_SECRET"):
        assert listed[secret].startswith(f"{secret}=**** "), listed[secret]
    section = "\n".join(lines)
    assert DEFAULT_API_KEY not in section and "local-callback-secret" not in section
    assert "not taken from the shell: TWOPASS_QUEUE_URL" in section
    # Every listed setting differs from the code's default; every one that differs is listed.
    env = stack.environment()
    assert sorted(listed) == [name for name, _, _ in env.not_default()]
