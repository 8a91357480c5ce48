"""`TWOPASS_RESULT_CACHE=1 make run`: a setting given in the shell reaches the API and the worker of the
local stack over the template's default (``ResultCache`` false), and the banner says so.

The stack runs as a user runs it (``python -m twopass.local`` in a child process, real HTTP on
loopback), with small model packs so it starts in seconds. The shell also holds a queue URL of
somewhere else: the stack's own queue wins, and jobs still complete.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from tests.e2e.helpers import final, until
from tests.modelpacks import FLOWERS, flat_image, write_pack
from twopass.config import REPO_ROOT
from twopass.jobs.cache import CACHE_PREFIX
from twopass.local import template as tpl
from twopass.local.provision import API_FUNCTION
from twopass.local.stack import DEFAULT_API_KEY, free_port

pytestmark = pytest.mark.e2e

ELSEWHERE = "http://127.0.0.1:9/000000000000/not-this-stack"


@dataclass
class Running:
    api_url: str
    stdout: Path
    emulator_url: str


def cache_entries(emulator_url: str) -> int:
    """Result-cache items in the stack's tables (read from its emulator, as an operator would)."""
    db = boto3.client(
        "dynamodb", endpoint_url=emulator_url, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    count = 0
    for table in db.list_tables()["TableNames"]:
        for page in db.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            count += sum(1 for item in page["Items"] if item.get("job_id", {}).get("S", "").startswith(CACHE_PREFIX))
    return count


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    tmp = tmp_path_factory.mktemp("shell-settings")
    fast = write_pack(tmp / "fast", labels=FLOWERS, size=32, name="flowers-fast")
    slow = write_pack(tmp / "slow", labels=FLOWERS, size=48, layout="NHWC", name="flowers-slow")
    api_port, emulator_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "layers" / "twopass"),
        "TWOPASS_RESULT_CACHE": "1",  # the template says false
        "TWOPASS_TOP_K": "5",  # the code's default: not listed
        "TWOPASS_QUEUE_URL": ELSEWHERE,  # names a resource the stack creates: not taken
        "TWOPASS_FAST_MODEL": str(fast),
        "TWOPASS_SLOW_MODEL": str(slow),
        "TWOPASS_POLL_WAIT_SECONDS": "1",
        "TWOPASS_HEARTBEAT_SECONDS": "1",
    }
    stdout, stderr = tmp / "stdout.txt", tmp / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "twopass.local", "--api-port", str(api_port), "--emulator-port", str(emulator_port),
             "--log-dir", str(tmp / "logs")],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops everything" not in stdout.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the local stack did not start: {stderr.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Running(f"http://127.0.0.1:{api_port}", stdout, f"http://127.0.0.1:{emulator_port}")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def post(client: httpx.Client, image: bytes) -> dict[str, Any]:
    response = client.post("/predict", content=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_the_template_leaves_the_result_cache_off() -> None:
    """What the stack would run with if the shell did not win: the template's default."""
    cfn = tpl.transform_file()
    params = tpl.parameter_defaults(cfn)
    node = tpl.function_environment(cfn, API_FUNCTION)["TWOPASS_RESULT_CACHE"]
    assert tpl.resolve(node, lambda *_: "", params, cfn.get("Conditions")) == "false"


def test_a_result_cache_switched_on_in_the_shell_answers_a_repeated_image(running: Running) -> None:
    image = flat_image((0, 255, 0)) + b"shell-settings"  # bytes no other test sends
    with httpx.Client(base_url=running.api_url, headers={"x-api-key": DEFAULT_API_KEY}, timeout=30) as client:
        # The cache is keyed by the serving slow model's version, which the API learns from a worker's
        # heartbeat (and remembers for a while, an unknown version too): ask once a worker has reported.
        until(lambda: client.get("/health/all").json()["backends"]["worker"]["alive"], 60, "a worker's heartbeat")
        entries = cache_entries(running.emulator_url)
        first = post(client, image)
        assert first["status"] == "queued" and first["flowers-fast"] == "fern"
        done = final(client, first["job_id"], timeout=60)  # through the stack's own queue
        assert done["status"] == "succeeded" and done["cached"] is False and done["slow"]["label"] == "fern"
        # The worker fills the cache just after it writes the job final: a client that asks again at
        # once may be a moment early on a busy machine.
        until(lambda: cache_entries(running.emulator_url) > entries, 30, "the result cached")

        again = post(client, image)
        # With the template's default the same image would be queued again.
        assert again["status"] == "succeeded" and again["cached"] is True and again["answered_by"] == "slow"
        assert again["slow"]["label"] == "fern" and again["job_id"] != first["job_id"]


def test_the_banner_lists_the_settings_not_at_their_defaults(running: Running) -> None:
    text = running.stdout.read_text()
    section = text.split("Settings not at their defaults", 1)[1].split("\nTry:", 1)[0]
    listed = {line.split()[0].split("=", 1)[0]: line.split() for line in section.splitlines()[1:] if "=" in line}
    assert listed["TWOPASS_RESULT_CACHE"] == ["TWOPASS_RESULT_CACHE=1", "(shell)"]
    assert listed["TWOPASS_FAST_MODEL"][1] == "(shell)"
    assert listed["TWOPASS_API_KEYS"][0] == "TWOPASS_API_KEYS=****" and DEFAULT_API_KEY not in section
    assert listed["TWOPASS_CALLBACK_SECRET"][0] == "TWOPASS_CALLBACK_SECRET=****"
    assert "TWOPASS_TOP_K" not in listed
    # The stack's own queue is named on its line above, not listed as a setting; the shell's is not used.
    assert "TWOPASS_QUEUE_URL" not in listed and ELSEWHERE not in text
    assert "queue            https://sqs." in text
    assert "not taken from the shell: TWOPASS_QUEUE_URL" in section
