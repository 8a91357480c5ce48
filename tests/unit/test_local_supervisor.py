"""The local stack's supervision and stop order on real child processes (no emulator, no models)."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from twopass.local.httpserver import HttpLimits
from twopass.local.stack import LocalStack, describe_exit

#: A child that records when SIGTERM reached it, then exits (or, with IGNORE, carries on regardless).
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    path, ignore = sys.argv[1], sys.argv[2] == "ignore"
    def on_term(*_):
        with open(path, "a") as f:
            f.write(f"{time.time()}\\n")
        if not ignore:
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_term)
    open(path, "a").close()
    while True:
        time.sleep(0.01)
    """
)


class CrashingWorkers(LocalStack):
    """A stack whose workers exit at once with code 2 (a worker that cannot start)."""

    def worker_command(self) -> list[str]:
        return [sys.executable, "-c", "raise SystemExit(2)"]


def child(stack: LocalStack, name: str, marks: Path, *, ignore_term: bool = False) -> subprocess.Popen[bytes]:
    proc = stack.children.spawn(
        name, [sys.executable, "-c", CHILD, str(marks / name), "ignore" if ignore_term else "exit"], {}
    )
    deadline = time.monotonic() + 10
    while not (marks / name).exists():  # its SIGTERM handler is installed
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return proc


def test_describe_exit() -> None:
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(0) == "exit code 0"


def test_a_dead_worker_is_restarted_with_backoff_and_the_api_dying_is_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="twopass.local")
    stack = CrashingWorkers(log_dir=tmp_path)
    try:
        api = child(stack, "api", tmp_path)
        stack.start_worker("worker-0")
        started = time.monotonic()
        while time.monotonic() - started < 3.6:
            assert stack.supervise() == []  # a crashing worker is never a reason to stop
            time.sleep(0.05)
        # Exits at ~0 s, restarted at ~1 s (1 s backoff), exits, restarted at ~3 s (2 s backoff).
        assert stack.restarts() == {"worker-0": 2}
        messages = [r.getMessage() for r in caplog.records]
        assert "worker-0 exited (exit code 2); restarting it in 1 s" in messages
        assert "worker-0 exited (exit code 2); restarting it in 2 s" in messages
        assert sum("worker-0 restarted" in m for m in messages) == 2

        api.send_signal(signal.SIGKILL)
        api.wait()
        assert stack.supervise() == ["the API exited (killed by SIGKILL)"]
    finally:
        stack.stop(timeout=2)


def test_stop_goes_workers_then_api_then_emulator_within_its_timeout(tmp_path: Path) -> None:
    stack = LocalStack(log_dir=tmp_path)
    # The worker ignores SIGTERM: it is killed at its share of the timeout, and the rest still stop in order.
    procs = {
        "worker-0": child(stack, "worker-0", tmp_path, ignore_term=True),
        "api": child(stack, "api", tmp_path),
        "emulator": child(stack, "emulator", tmp_path),
    }
    started = time.monotonic()
    stack.stop(timeout=1.0)
    took = time.monotonic() - started
    assert took < 1.3
    assert all(p.poll() is not None for p in procs.values())
    assert procs["worker-0"].returncode == -signal.SIGKILL
    assert procs["api"].returncode == 0 and procs["emulator"].returncode == 0
    termed = {name: float((tmp_path / name).read_text().split()[0]) for name in procs}
    assert termed["worker-0"] < termed["api"] < termed["emulator"]
    assert termed["api"] - termed["worker-0"] >= 0.5  # the API waited for the workers' share


def test_children_run_in_their_own_process_groups(tmp_path: Path) -> None:
    import os

    stack = LocalStack(log_dir=tmp_path)
    try:
        proc = child(stack, "api", tmp_path)
        # The terminal's Ctrl-C (sent to the foreground group) must reach only the stack's owner.
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    finally:
        stack.stop(timeout=1)


def test_http_limits_from_the_environment() -> None:
    limits = HttpLimits.from_env(
        {"TWOPASS_LOCAL_HTTP_HEADER_TIMEOUT": "1.5", "TWOPASS_LOCAL_HTTP_MAX_HEADER_BYTES": "100"}
    )
    assert limits.header_timeout == 1.5 and limits.max_header_bytes == 100
    assert limits.body_timeout == HttpLimits().body_timeout
    assert HttpLimits.from_env(limits.to_env()) == limits
