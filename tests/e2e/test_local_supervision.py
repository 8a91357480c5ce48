"""`make run` as a user runs it (``python -m twopass.local`` in a child process, real HTTP on loopback):
a killed worker comes back and jobs still complete, the API's HTTP limits answer 431/408 instead of
resetting or hanging, the banner's commands work, and Ctrl-C stops everything within 5 s, idle or busy.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from twopass.config import REPO_ROOT
from twopass.local.stack import DEFAULT_API_KEY, free_port

pytestmark = pytest.mark.e2e

#: What `make run` promises: Ctrl-C to exit, idle or busy.
STOP_PROMISE = 5.0
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
KEY = {"x-api-key": DEFAULT_API_KEY}


def children(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: {pid: command line}."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    api_url: str
    emulator_port: int
    log_dir: Path
    stdout: Path
    stderr: Path

    def worker_pids(self) -> list[int]:
        return [pid for pid, cmd in children(self.proc.pid).items() if "twopass.worker" in cmd]

    def stop(self, signum: int = signal.SIGINT) -> float:
        """Signal the stack's process like Ctrl-C does; seconds until it has exited."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        self.proc.wait(30)
        return time.monotonic() - started


def start_stack(tmp: Path) -> RunningStack:
    api_port, emulator_port = free_port(), free_port()
    env = {
        **os.environ,
        "TWOPASS_LOCAL_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "TWOPASS_LOCAL_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
        # A message a killed worker's long poll took with it comes back after 5 s, not a minute.
        "TWOPASS_VISIBILITY_TIMEOUT_SECONDS": "5",
    }
    stdout, stderr = tmp / "stdout.txt", tmp / "stderr.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "twopass.local", "--api-port", str(api_port), "--emulator-port", str(emulator_port),
             "--log-dir", str(tmp / "logs")],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=err, text=True,
        )  # fmt: skip
    running = RunningStack(proc, f"http://127.0.0.1:{api_port}", emulator_port, tmp / "logs", stdout, stderr)
    deadline = time.monotonic() + 120
    while "Ctrl-C stops everything" not in stdout.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the local stack did not start: {stderr.read_text()[-2000:]}")
        time.sleep(0.2)
    return running


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def finish(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data: dict[str, Any] = client.get(f"/job/{job_id}").json()
        if data["status"] in ("succeeded", "failed"):
            return data
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout}s")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    stack = start_stack(tmp_path_factory.mktemp("make-run"))
    try:
        yield stack
    finally:
        if stack.proc.poll() is None:
            stack.stop()


def test_banner_prints_the_callback_secret_and_a_twopass_command_that_works(running: RunningStack) -> None:
    banner = running.stdout.read_text()
    assert re.search(r"callback secret\s+local-callback-secret\b", banner)
    line = next(line.strip() for line in banner.splitlines() if " predict " in line and "TWOPASS_API_KEY=" in line)
    env_assignment, command, *args = shlex.split(line)
    assert command == ".venv/bin/twopass" or Path(command).is_absolute()
    # Run it as printed, from the checkout (where `make run` prints it), with one photo to keep it short.
    args[args.index("tests/data")] = "tests/data/coffee.jpg"
    name, value = env_assignment.split("=", 1)
    result = subprocess.run(
        [command, *args],
        cwd=REPO_ROOT,
        env={**os.environ, name: value},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert "espresso" in result.stdout and "succeeded" in result.stdout


def test_a_1_mib_header_gets_431_not_a_reset(running: RunningStack) -> None:
    response = httpx.get(f"{running.api_url}/health", headers={"x-big": "a" * (1 << 20)}, timeout=30)
    assert response.status_code == 431
    body = response.json()
    assert body["error"] == "request_header_fields_too_large" and set(body) == {"error", "detail"}
    assert str(running.emulator_port) not in response.text
    # The server is fine afterwards, and a normal large-ish header passes.
    assert httpx.get(f"{running.api_url}/health", headers={"x-ok": "a" * 8000}).status_code == 200


def raw_exchange(url: str, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data`` and read until the server closes: (everything received, seconds it took)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, time.monotonic() - started


def test_slow_header_and_slow_body_get_408_in_time(running: RunningStack) -> None:
    reply, took = raw_exchange(running.api_url, b"GET /health HTTP/1.1\r\nHost: x\r\nx-slow: ")
    assert reply.startswith(b"HTTP/1.1 408 ") and b'"error": "request_timeout"' in reply
    assert HEADER_TIMEOUT * 0.8 < took < HEADER_TIMEOUT + 2

    reply, took = raw_exchange(
        running.api_url,
        b"POST /predict HTTP/1.1\r\nHost: x\r\nx-api-key: local-dev-key\r\n"
        b"Content-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n\xff\xd8",
    )
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert BODY_TIMEOUT * 0.8 < took < BODY_TIMEOUT + 2


def test_idle_keep_alive_connections_are_closed(running: RunningStack) -> None:
    reply, took = raw_exchange(running.api_url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=15)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert took < 10  # uvicorn's keep-alive timeout (5 s) closed it; the client never did


def test_a_killed_worker_is_restarted_and_jobs_still_complete(running: RunningStack, photo: Any) -> None:
    [worker] = running.worker_pids()
    os.kill(worker, signal.SIGKILL)
    with httpx.Client(base_url=running.api_url, headers=KEY, timeout=30) as client:
        posted = client.post("/predict", content=photo("coffee.jpg"), headers={"Content-Type": "image/jpeg"})
        assert posted.status_code == 200
        wait_for(lambda: running.worker_pids() not in ([], [worker]), 30, "a new worker process")
        # Posted while no worker ran (and maybe handed to the dead one's open long poll): done all the same.
        assert finish(client, posted.json()["job_id"], timeout=40)["status"] == "succeeded"
        assert client.get("/health").status_code == 200
    log = running.stderr.read_text()
    assert "worker-0 exited (killed by SIGKILL); restarting it in 1 s" in log
    assert "worker-0 restarted" in log
    assert running.proc.poll() is None  # the stack itself carried on


def test_ctrl_c_when_idle_stops_everything_within_5_s(running: RunningStack) -> None:
    time.sleep(1)
    kids = children(running.proc.pid)
    assert len(kids) == 3  # emulator, API, worker
    took = running.stop()
    assert running.proc.returncode == 0
    assert took < STOP_PROMISE, took
    assert not [pid for pid in kids if alive(pid)]
    print(f"idle stop: {took:.2f} s")


@pytest.mark.slow
def test_ctrl_c_when_busy_stops_everything_within_5_s(tmp_path: Path, photo: Any) -> None:
    stack = start_stack(tmp_path)
    try:
        kids = children(stack.proc.pid)
        with httpx.Client(base_url=stack.api_url, headers=KEY, timeout=30) as client, ThreadPoolExecutor(4) as pool:
            images = [photo("coffee.jpg"), photo("chelsea.jpg")] * 20
            posted = list(
                pool.map(
                    lambda image: client.post("/predict", content=image, headers={"Content-Type": "image/jpeg"}),
                    images,
                )
            )
            assert all(p.status_code == 200 for p in posted)
            # Stop while the worker is part-way through the backlog.
            wait_for(lambda: client.get(f"/job/{posted[0].json()['job_id']}").json()["status"] != "queued", 30, "work")
            took = stack.stop()
        assert took < STOP_PROMISE, took
        assert not [pid for pid in kids if alive(pid)]
        print(f"busy stop: {took:.2f} s")
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()


def test_the_api_dying_stops_the_stack_with_a_clear_message(tmp_path: Path) -> None:
    stack = start_stack(tmp_path)
    try:
        kids = children(stack.proc.pid)
        [api] = [pid for pid, cmd in kids.items() if "uvicorn" in cmd]
        os.kill(api, signal.SIGKILL)
        stack.proc.wait(15)
        assert stack.proc.returncode == 1
        assert "the API exited (killed by SIGKILL): stopping everything" in stack.stderr.read_text()
        assert not [pid for pid in kids if alive(pid)]
    finally:
        if stack.proc.poll() is None:
            stack.proc.kill()
