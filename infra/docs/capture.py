"""The captured outputs in README.md and docs/, regenerated from real runs against the local stack.

The examples are in ``infra/docs/examples.py``; this runs them and rewrites their regions. Commands
run in bash with the
checkout's virtualenv first on ``PATH`` and ``TWOPASS_API_KEY`` set, in a scratch folder holding
the test photos, against a stack started for the purpose on free ports; pages show the address of
``make run`` (``http://127.0.0.1:3000``) instead.

``tests/e2e/test_captured_docs.py`` runs the same examples against the test suite's stack and
fails when an answer's shape no longer matches its capture, or when a captured label or
probability for a bundled photo differs from the committed model card.

    python -m infra.docs.capture    # starts a local stack (~20 s), runs every example, rewrites the pages
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infra.docs import markers
from infra.docs.compare import ELIDED, JOB_ID, CaptureError, card_mismatches, facts
from infra.docs.examples import DOC_URL, EXAMPLES, Example, Step
from twopass.config import REPO_ROOT

PHOTOS = REPO_ROOT / "tests" / "data"
#: ``<job:NAME>`` in a command: the id of the job a previous step remembered as NAME.
JOB_REF = re.compile(r"<job:(\w+)>")


# -- running -----------------------------------------------------------------------------------


@dataclass
class Session:
    """What the examples share while they run: the stack's address, a scratch folder, job ids."""

    api_url: str
    api_key: str
    workdir: Path
    jobs: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env["TWOPASS_URL"] = self.api_url
        env["TWOPASS_API_KEY"] = self.api_key
        # Unbuffered, so stdout and stderr interleave as a terminal shows them.
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def to_live(self, text: str) -> str:
        text = text.replace(DOC_URL, self.api_url)
        return JOB_REF.sub(lambda m: self.jobs[m[1]], text)

    def to_page(self, text: str) -> str:
        return text.replace(self.api_url, DOC_URL)

    def wait_final(self, job_id: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.api_url, headers={"x-api-key": self.api_key}, timeout=10) as http:
            while time.monotonic() < deadline:
                if http.get(f"/job/{job_id}").json().get("status") in ("succeeded", "failed"):
                    return
                time.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not finish within {timeout} s")


@contextmanager
def session(api_url: str, api_key: str) -> Iterator[Session]:
    """A scratch folder with ``tests/data`` (the photos) and ``not-an-image.jpg``, as the pages assume."""
    with tempfile.TemporaryDirectory(prefix="twopass-capture-") as tmp:
        work = Path(tmp)
        shutil.copytree(PHOTOS, work / "tests" / "data", ignore=shutil.ignore_patterns("*.json"))
        (work / "not-an-image.jpg").write_bytes(b"not a jpeg")
        yield Session(api_url, api_key, work)


def _run(argv: Sequence[str], s: Session, timeout: float = 180) -> str:
    proc = subprocess.run(
        list(argv), cwd=s.workdir, env=s.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout
    )
    return proc.stdout.decode()


def run_step(step: Step, s: Session) -> tuple[str, str]:
    """Run one step; returns the command and the output as the page shows them."""
    if step.after_job:
        s.wait_final(s.jobs[step.after_job])
    command = JOB_REF.sub(lambda m: s.jobs[m[1]], step.command)
    raw = _run(["bash", "-c", s.to_live(command)], s)
    if step.remember:
        s.jobs[step.remember] = JOB_ID.findall(raw)[0]
    return command, s.to_page(show(step, raw))


def run_example(example: Example, s: Session) -> str:
    """Run ``example``; returns the body of its region."""
    if example.steps:
        blocks = []
        for step in example.steps:
            command, output = run_step(step, s)
            blocks.append(f"$ {command}\n{output.rstrip()}")
        return "```console\n" + "\n\n".join(blocks) + "\n```\n"
    code = python_block(example.page.read_text(), example.region)
    output = s.to_page(_run([sys.executable, "-c", s.to_live(code)], s)).rstrip()
    if example.last_line:
        output = output.splitlines()[-1]
    return "```text\n" + output + "\n```\n"


def python_block(text: str, region: str) -> str:
    """The last ``python`` block above ``region``: the code whose output the region holds."""
    before = text[: text.index(f"<!-- begin {region}")]
    blocks = re.findall(r"```python\n(.*?)```", before, flags=re.S)
    if not blocks:
        raise markers.MarkerError(f"no python block above region {region!r}")
    return str(blocks[-1])


# -- showing -----------------------------------------------------------------------------------


def show(step: Step, raw: str) -> str:
    raw = raw.replace("\r\n", "\n")
    if step.show == "pretty":
        return pretty(json.loads(raw))
    if step.show == "json":
        return compact(json.loads(raw), step.elide)
    if step.show == "http":
        head, _, body = raw.partition("\n\n")
        status, *headers = head.splitlines()
        kept = [h for h in headers if h.lower().startswith("content-type:")]
        return "\n".join([status, *kept, "", body.strip()])
    return raw


def compact(doc: Any, elide: Sequence[str] = ()) -> str:
    shown = {k: (ELIDED if k in elide else v) for k, v in doc.items()} if isinstance(doc, dict) else doc
    return json.dumps(shown, separators=(",", ":"), ensure_ascii=False).replace(f'"{ELIDED}"', "{...}")


def pretty(doc: Any, indent: int = 0) -> str:
    """``python -m json.tool``'s layout, but a list of flat objects (top-k) gets one line per entry."""
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(doc, dict) and doc:
        items = [f"{inner}{json.dumps(k)}: {pretty(v, indent + 4)}" for k, v in doc.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(doc, list) and doc:
        flat = all(isinstance(e, dict) and not any(isinstance(v, dict | list) for v in e.values()) for e in doc)
        entries = [json.dumps(e, ensure_ascii=False) if flat else pretty(e, indent + 4) for e in doc]
        return "[\n" + ",\n".join(f"{inner}{e}" for e in entries) + f"\n{pad}]"
    return json.dumps(doc, ensure_ascii=False)


# -- the script --------------------------------------------------------------------------------


def capture_all(s: Session, examples: Sequence[Example] = EXAMPLES) -> dict[Path, dict[str, str]]:
    """Run every example; ``{page: {region: body}}``."""
    pages: dict[Path, dict[str, str]] = {}
    for example in examples:
        print(f"  {example.page.relative_to(REPO_ROOT)}: {example.name}", file=sys.stderr)
        pages.setdefault(example.page, {})[example.region] = run_example(example, s)
    return pages


def check_pages(pages: dict[Path, dict[str, str]]) -> list[str]:
    """Problems with fresh captures before they are written: facts that contradict the cards."""
    problems = []
    for example in EXAMPLES:
        try:
            found = facts(example, pages[example.page][example.region])
        except CaptureError as exc:
            problems.append(str(exc))
            continue
        problems += [f"{example.region}: {m}" for m in card_mismatches(found)]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.docs.capture", description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    from twopass.local.stack import LocalStack, free_port

    with tempfile.TemporaryDirectory(prefix="twopass-capture-logs-") as logs:
        stack = LocalStack(api_port=free_port(), emulator_port=free_port(), log_dir=Path(logs))
        print(f"starting a local stack on {stack.api_url} …", file=sys.stderr)
        with stack, session(stack.api_url, stack.api_key or "") as s:
            pages = capture_all(s)
    for page, bodies in pages.items():
        changed = markers.rewrite(page, bodies)
        print(f"{page.relative_to(REPO_ROOT)}: {'rewritten' if changed else 'up to date'}", file=sys.stderr)
    # Written either way, to be looked at; but a capture that contradicts a card fails the run.
    problems = check_pages(pages)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
