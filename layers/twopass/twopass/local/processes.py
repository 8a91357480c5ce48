"""The child processes of a local stack: started by name, each in a process group of its own, with
its output in a log file or the terminal, and stopped group by group, SIGKILL at a deadline.

Both ``make run`` (:class:`~twopass.local.stack.LocalStack`) and ``make sam-local``
(:class:`~twopass.local.samlocal.SamLocal`) keep their children in a :class:`Children`.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from twopass.config import REPO_ROOT

#: Children whose name starts so are workers: they stop first, and die without ending the stack.
WORKER_PREFIX = "worker"


def describe_exit(code: int) -> str:
    """``exit code 1`` / ``killed by SIGKILL``: how a child ended, for people."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers below 500; fail early if ``proc`` (the server) exits meanwhile."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")


@dataclass
class Children:
    """Named child processes; output in ``log_dir/<name>.log`` if set, else the terminal."""

    log_dir: Path | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: dict[str, IO[bytes]] = field(default_factory=dict)

    def spawn(
        self, name: str, args: list[str], env: Mapping[str, str], *, quiet: bool = False
    ) -> subprocess.Popen[bytes]:
        """Start (or restart) the child ``name``; ``quiet``: its output goes nowhere unless to a log."""
        out = self._output(name, quiet)
        proc = subprocess.Popen(
            args,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            cwd=REPO_ROOT,
            # A process group of its own: the terminal's Ctrl-C goes to the stack's owner only, which
            # stops the children in order instead of all of them dying at once (workers logging
            # connection errors against an emulator already gone, SAM leaving its containers behind).
            process_group=0,
        )
        self.procs[name] = proc
        return proc

    def _output(self, name: str, quiet: bool) -> IO[bytes] | int | None:
        if self.log_dir is None:
            return subprocess.DEVNULL if quiet else None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        previous = self._logs.pop(name, None)  # a restarted worker appends to the same log
        if previous is not None:
            previous.close()
        log = self._logs[name] = (self.log_dir / f"{name}.log").open("ab")
        return log

    def workers(self) -> list[str]:
        return [name for name in self.procs if name.startswith(WORKER_PREFIX)]

    def alive(self) -> dict[str, bool]:
        return {name: proc.poll() is None for name, proc in self.procs.items()}

    def terminate(self, names: Iterable[str], deadline: float) -> None:
        """SIGTERM the named children (those not started are skipped), SIGKILL any left at ``deadline``."""
        live = [self.procs[n] for n in names if n in self.procs and self.procs[n].poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        for proc in live:
            try:
                proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Forget the children (stopped by now) and close their logs."""
        self.procs.clear()
        for log in self._logs.values():
            log.close()
        self._logs.clear()
