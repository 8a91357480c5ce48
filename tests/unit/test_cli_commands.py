"""The ``twopass`` parser: one parser for every command, each argument parsed once, usage errors shown
with the usage of the command that has them, and the help of every command printed without its
models (``cost``/``plan``/``model``/``calibrate`` load theirs only when they run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from twopass import __version__, cli
from twopass.config import REPO_ROOT

#: What ``twopass --help`` lists, in its order.
COMMANDS = ("predict", "job", "cancel", "retry", "jobs", "health", "redrive", "cost", "plan", "calibrate", "model")


def test_help_lists_every_command_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    listed = re.findall(r"^    ([a-z]+) ", capsys.readouterr().out, re.MULTILINE)
    assert listed == [*COMMANDS, "local"]


@pytest.mark.parametrize("command", [*COMMANDS, "model init", "model check"])
def test_each_command_answers_help_with_its_own_usage(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Returned, not raised: main() gives the exit code for every command, the operator tools' included.
    assert cli.main([*command.split(), "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: twopass {command} ")


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["cost", "--bogus"], "twopass cost"),
        (["plan", "--rate", "1", "--bogus"], "twopass plan"),
        (["calibrate", "photos", "--bogus"], "twopass calibrate"),
        (["model", "check", "pack", "--bogus"], "twopass model"),
        (["predict", "a.jpg", "--bogus"], "twopass"),
        (["job", "a", "b"], "twopass"),
    ],
)
def test_an_unknown_argument_is_shown_with_the_usage_it_belongs_to(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} [-h]")
    assert err.rstrip().splitlines()[-1].startswith(f"{usage}: error: unrecognized arguments: ")


def test_the_operator_tools_help_loads_none_of_their_models() -> None:
    code = textwrap.dedent(
        """
        import contextlib, io, json, sys
        import twopass.cli
        with contextlib.redirect_stdout(io.StringIO()):
            codes = [twopass.cli.main([*argv, "--help"]) for argv in (["cost"], ["plan"], ["calibrate"], ["model", "init"])]
        print(json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(REPO_ROOT / "layers" / "twopass")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    loaded = json.loads(out.stdout)
    assert loaded["codes"] == [0, 0, 0, 0]
    models = ("twopass.tools.cost", "twopass.tools.plan", "twopass.tools.calibrate", "twopass.models.pack")
    assert not [m for m in loaded["modules"] if m in models]


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twopass.cli", "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"twopass {__version__}")
