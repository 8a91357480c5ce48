"""The examples the pages show: which commands, how their outputs are shown, what they say about the photos.

Each example names a region of a page (``<!-- begin capture.NAME -->`` … ``<!-- end … -->``). A
shell example's region is a ``console`` block, commands and outputs both, written from what the
commands printed; a Python example's code is the ``python`` block written by hand just above its
region, run as it stands, and its region holds what it printed. ``infra/docs/capture.py`` runs
them; ``infra/docs/compare.py`` reads the pages back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twopass.config import REPO_ROOT

#: Where ``make run`` serves the API: what every page shows.
DOC_URL = "http://127.0.0.1:3000"
README = REPO_ROOT / "README.md"
CLIENTS = REPO_ROOT / "docs" / "clients.md"


# -- facts: the labels and probabilities a capture shows for the bundled photos ---------------


@dataclass(frozen=True)
class Fact:
    """One top-1 answer a capture shows: the ``role`` model said ``label`` (with ``probability``,
    when the capture shows it) for ``photo``."""

    role: str
    photo: str
    label: str
    probability: float | None


@dataclass(frozen=True)
class JsonFact:
    """The top-1 answer in a JSON document about ``photo``: the object at ``path`` (``<job_id>``
    stands for the job's own id), its ``label`` key and, unless empty, its ``prob`` key."""

    role: str
    photo: str
    path: tuple[str | int, ...]
    label: str = "label"
    prob: str = "probability"

    def find(self, documents: Sequence[Any]) -> list[Fact]:
        found = []
        for doc in documents:
            value = _at(doc, self.path)
            if isinstance(value, dict) and self.label in value:
                prob = float(value[self.prob]) if self.prob else None
                found.append(Fact(self.role, self.photo, value[self.label], prob))
        return found


def _at(doc: Any, path: Sequence[str | int]) -> Any:
    value = doc
    for key in path:
        try:
            value = value[doc["job_id"] if key == "<job_id>" else key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


@dataclass(frozen=True)
class LineFact:
    """A label and probability in an output line: ``pattern`` has groups ``label``, ``prob`` and,
    unless ``photo`` is given, ``photo`` (the photo's file stem)."""

    role: str
    pattern: str
    photo: str = ""

    def find(self, text: str) -> list[Fact]:
        found = []
        for line in text.splitlines():
            if m := re.search(self.pattern, line):
                photo = self.photo or m["photo"]
                found.append(Fact(self.role, photo, m["label"].strip(), float(m["prob"])))
        return found


# -- examples ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One shell command of a console example and how its output is shown.

    ``show``: ``text`` as printed; ``json`` one compact JSON document as the server sent it;
    ``pretty`` JSON as ``json.tool`` prints it with each top-k entry folded onto one line;
    ``http`` the status line, the content type and the body of ``curl -i``.
    """

    command: str
    show: str = "text"
    #: Remember the job id this step printed under this name (for ``<job:NAME>`` later).
    remember: str = ""
    #: Before running, wait until the job named here is final (a user would give it a moment).
    after_job: str = ""
    #: JSON keys whose values are shown as ``{...}`` (to keep a line short).
    elide: tuple[str, ...] = ()
    facts: tuple[JsonFact | LineFact, ...] = ()


@dataclass(frozen=True)
class Example:
    """A captured region: shell ``steps``, or else the Python block just above the region."""

    page: Path
    name: str
    steps: tuple[Step, ...] = ()
    #: Python examples: show only the last line printed (the exception a traceback ends with).
    last_line: bool = False
    facts: tuple[LineFact, ...] = ()

    @property
    def region(self) -> str:
        return f"capture.{self.name}"


KEY = "-H 'x-api-key: local-dev-key'"
#: A CLI table row: the photo, then its fast label; and the slow label after the job id.
ROW_FAST = LineFact("fast", r"^tests/data/(?P<photo>\w+)\.jpg +(?P<label>[^()]+?) \((?P<prob>\d\.\d+)\)")
ROW_SLOW = LineFact(
    "slow", r"^tests/data/(?P<photo>\w+)\.jpg +.+? [0-9a-f]{32} +(?P<label>[^()]+?) \((?P<prob>\d\.\d+)\)"
)

EXAMPLES: tuple[Example, ...] = (
    Example(
        README,
        "quickstart",
        (
            Step(
                f"curl -s {KEY} {DOC_URL}/predict/test",
                show="json",
                remember="test",
                elide=("fast",),
                facts=(JsonFact("fast", "chelsea", (), label="efficientnet-lite0", prob=""),),
            ),
            Step(
                f"curl -s {KEY} {DOC_URL}/job/<job:test>",
                show="json",
                after_job="test",
                elide=("slow",),
                facts=(JsonFact("slow", "chelsea", ("<job_id>",), label="prediction", prob=""),),
            ),
        ),
    ),
    Example(
        CLIENTS,
        "curl",
        (
            Step(f"curl -s {DOC_URL}/health"),
            Step(
                f"curl -s {KEY} -X POST -H 'Content-Type: image/jpeg' --data-binary @tests/data/chelsea.jpg \\\n"
                f"      {DOC_URL}/predict | python -m json.tool",
                show="pretty",
                remember="chelsea",
                facts=(JsonFact("fast", "chelsea", ("fast", "top_k", 0)),),
            ),
            Step(
                f"curl -s {KEY} {DOC_URL}/job/<job:chelsea> | python -m json.tool",
                show="pretty",
                after_job="chelsea",
                facts=(JsonFact("slow", "chelsea", ("slow", "top_k", 0)),),
            ),
            Step(
                "(echo -n '{\"image_data\": \"'; base64 -w0 tests/data/coffee.jpg; echo '\"}') | \\\n"
                f"      curl -s {KEY} -X POST -H 'Content-Type: application/json' -d @- {DOC_URL}/predict",
                show="json",
                remember="coffee",
                facts=(JsonFact("fast", "coffee", ("fast", "top_k", 0)),),
            ),
        ),
    ),
    Example(
        CLIENTS,
        "curl-errors",
        (
            Step(f"curl -s -i {KEY} {DOC_URL}/job/0123456789abcdef0123456789abcdef", show="http"),
            Step(
                f"curl -s -i {KEY} -X POST -H 'Content-Type: image/jpeg' --data-binary 'not a jpeg' {DOC_URL}/predict",
                show="http",
            ),
        ),
    ),
    Example(
        CLIENTS,
        "sdk",
        facts=(
            LineFact("fast", r"^(?P<label>[^\d]+) (?P<prob>0\.\d+) [0-9a-f]{32}$", photo="chelsea"),
            LineFact("slow", r"^succeeded (?P<label>[^\d]+) (?P<prob>0\.\d+) efficientnet-lite2$", photo="chelsea"),
        ),
    ),
    Example(
        CLIENTS,
        "sdk-async",
        facts=(LineFact("slow", r"^(?P<photo>\w+)\.jpg +(?P<label>.+?) +(?P<prob>\d\.\d+)$"),),
    ),
    Example(CLIENTS, "sdk-event-loop", last_line=True),
    Example(
        CLIENTS,
        "cli",
        (
            Step("twopass predict tests/data", remember="astronaut", facts=(ROW_FAST,)),
            Step("twopass predict tests/data --wait", facts=(ROW_FAST, ROW_SLOW)),
            Step(
                "twopass predict tests/data/chelsea.jpg --wait --json",
                facts=(JsonFact("fast", "chelsea", ("fast",)), JsonFact("slow", "chelsea", ("slow",))),
            ),
            Step(
                "twopass job <job:astronaut> --wait",
                facts=(LineFact("slow", r"^slow +(?P<label>[^()]+?) \((?P<prob>\d\.\d+)\)", photo="astronaut"),),
            ),
            Step("twopass health --all"),
        ),
    ),
    Example(
        CLIENTS,
        "cli-errors",
        (
            Step('twopass predict not-an-image.jpg tests/data/chelsea.jpg; echo "exit $?"', facts=(ROW_FAST,)),
            Step('twopass job 0123456789abcdef0123456789abcdef; echo "exit $?"'),
            Step('twopass --url http://127.0.0.1:9 health; echo "exit $?"'),
        ),
    ),
    Example(
        CLIENTS,
        "jobs",
        (
            Step(
                f"curl -s {KEY} -X POST -H 'Content-Type: image/jpeg' --data-binary @tests/data/coffee.jpg \\\n"
                f"      '{DOC_URL}/predict?priority=high&deadline_seconds=300'",
                show="json",
                remember="urgent",
                elide=("fast",),
                facts=(JsonFact("fast", "coffee", (), label="efficientnet-lite0", prob=""),),
            ),
            # Newest first: the job just queued is the first succeeded one once it has finished.
            Step(
                f"curl -s {KEY} '{DOC_URL}/jobs?status=succeeded&limit=1' | python -m json.tool",
                show="pretty",
                after_job="urgent",
                facts=(JsonFact("slow", "coffee", ("jobs", 0, "slow", "top_k", 0)),),
            ),
            Step(f"curl -s -i {KEY} -X DELETE {DOC_URL}/job/<job:urgent>", show="http"),
        ),
    ),
    Example(
        CLIENTS,
        "jobs-cli",
        (
            Step(
                "twopass jobs --status succeeded --limit 1",
                facts=(
                    LineFact(
                        "slow",
                        r"^[0-9a-f]{32} +succeeded +high +\S+ +(?P<label>[^()]+?) \((?P<prob>\d\.\d+)\)",
                        photo="coffee",
                    ),
                ),
            ),
            Step('twopass cancel <job:urgent>; echo "exit $?"'),
            Step('twopass retry <job:urgent>; echo "exit $?"'),
        ),
    ),
)
