"""The JavaScript client (``clients/js``) against the local stack: its own suite, run by Node's test
runner (``node --test``) with the stack's URL and key; a failing JavaScript test fails this one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from twopass.local.stack import LocalStack

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("node") is None and not os.environ.get("CI"), reason="node is not installed"),
]

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"
PACKAGED = Path(__file__).resolve().parents[2] / "layers" / "twopass" / "twopass" / "api" / "static" / "twopass.js"


def test_the_js_client_suite_passes_against_the_stack(stack: LocalStack) -> None:
    env = {**os.environ, "TWOPASS_URL": stack.api_url, "TWOPASS_API_KEY": stack.api_keys[0]}
    run = subprocess.run(
        ["node", "--test", "--test-reporter=spec", "test/"],
        cwd=CLIENT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    assert "# skipped 0" in run.stdout or "skipped 0" in run.stdout, run.stdout[-2000:]


def test_the_demo_page_serves_the_same_client() -> None:
    """``/demo/twopass.js`` is ``clients/js/src/index.js``, copied into the package for the Lambda layer."""
    assert PACKAGED.read_bytes() == (CLIENT / "src" / "index.js").read_bytes(), (
        "copy clients/js/src/index.js to layers/twopass/twopass/api/static/twopass.js"
    )
