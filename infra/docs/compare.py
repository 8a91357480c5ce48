"""Reading captured regions back: their commands and outputs, their shapes, what they say about the photos.

A capture and a fresh run have the same shape when their JSON has the same keys in the same order
with the same kinds of values (an elided ``{...}`` matches anything), and their text the same lines
once ids, times, numbers, labels and spacing are set aside. What a capture says about the bundled
photos (top-1 labels and probabilities) must agree with the committed model cards.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from infra.docs.examples import Example, Fact, JsonFact, LineFact
from twopass.config import Settings

JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")
#: Stands for an elided JSON value while parsing (pages show it as ``{...}``).
ELIDED = "\u2026elided\u2026"


class CaptureError(ValueError):
    """A captured region does not say what its example expects it to."""


# -- reading a page back -----------------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """One step of a captured region as the page has it."""

    command: str
    output: str


def parse_region(body: str) -> list[Shown]:
    """Split a region's code block into its commands (``$ …`` with ``\\`` continuations) and outputs."""
    lines = body.strip("\n").splitlines()[1:-1]  # inside the fence
    steps: list[Shown] = []
    command: list[str] = []
    output: list[str] = []
    for line in lines:
        if line.startswith("$ ") and not (command and command[-1].endswith("\\")):
            if command:
                steps.append(Shown("\n".join(command), "\n".join(output).strip("\n")))
            command, output = [line[2:]], []
        elif command and command[-1].endswith("\\") and not output:
            command.append(line)
        else:
            output.append(line)
    steps.append(Shown("\n".join(command), "\n".join(output).strip("\n")))
    return steps


def split_output(text: str) -> tuple[list[Any], str]:
    """An output's JSON objects (the whole of it, or one a line as ``--json`` prints them) and the
    rest of its text. ``{...}`` (elided) reads as a placeholder."""
    text = text.replace("{...}", json.dumps(ELIDED))
    try:
        whole = json.loads(text)
    except ValueError:
        pass
    else:
        if isinstance(whole, dict):
            return [whole], ""
    docs, rest = [], []
    for line in text.splitlines():
        try:
            doc = json.loads(line) if line.startswith("{") else None
        except ValueError:
            doc = None
        if isinstance(doc, dict):
            docs.append(doc)
        else:
            rest.append(line)
    return docs, "\n".join(rest)


def json_documents(text: str) -> list[Any]:
    return split_output(text)[0]


def facts(example: Example, region: str) -> list[Fact]:
    """The top-1 answers about the bundled photos that a committed region shows."""
    rules: list[tuple[str, JsonFact | LineFact]] = []
    shown = parse_region(region)
    if example.steps:
        for step, part in zip(example.steps, shown, strict=True):
            rules += [(part.output, rule) for rule in step.facts]
    else:
        rules += [(shown[0].output, rule) for rule in example.facts]
    found: list[Fact] = []
    for text, rule in rules:
        hits = rule.find(json_documents(text)) if isinstance(rule, JsonFact) else rule.find(text)
        if not hits:
            raise CaptureError(f"{example.region}: {rule} matches nothing in\n{text}")
        found += hits
    return found


# -- shapes: what must stay the same between a capture and a fresh run -------------------------


def json_shape(doc: Any) -> Any:
    """Keys (in order) and value kinds, recursively; job ids as keys become ``<job_id>``; numbers are numbers."""
    if doc == ELIDED:
        return ELIDED
    if isinstance(doc, dict):
        return {("<job_id>" if JOB_ID.fullmatch(k) else k): json_shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [json_shape(v) for v in doc]
    if isinstance(doc, bool) or doc is None:
        return type(doc).__name__
    if isinstance(doc, int | float):
        return "number"
    return "string"


def _shapes_match(captured: Any, live: Any) -> bool:
    if captured == ELIDED:
        return True
    if isinstance(captured, dict) and isinstance(live, dict):
        # In order: the pages show the keys in the order the API sends them.
        return list(captured) == list(live) and all(_shapes_match(captured[k], live[k]) for k in captured)
    if isinstance(captured, list) and isinstance(live, list):
        return len(captured) == len(live) and all(_shapes_match(c, v) for c, v in zip(captured, live, strict=True))
    return bool(captured == live)


@cache
def _label_pattern() -> re.Pattern[str]:
    from twopass.models.labels import imagenet_labels

    labels = sorted(set(imagenet_labels()), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(label) for label in labels) + r")(?![\w-])")


def text_shape(text: str) -> list[str]:
    """Lines with what varies from run to run (ids, times, numbers, labels) replaced, spacing collapsed."""
    text = JOB_ID.sub("<id>", text)
    text = re.sub(r"\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[+-]\d\d:\d\d)?|\d+:\d\d:\d\d(?:\.\d+)?", "<time>", text)
    text = _label_pattern().sub("<label>", text)
    text = re.sub(r"\d+(?:\.\d+)?", "<n>", text)
    return [re.sub(r"\s+", " ", line).strip() for line in text.splitlines()]


def shape_mismatch(captured: str, live: str) -> str | None:
    """``None`` when ``live`` has the shape of ``captured``; else what differs.

    JSON is compared by keys and kinds of values (an elided value matches anything); an HTTP
    answer's status line and headers, and text, line by line with what varies replaced.
    """
    if captured.startswith("HTTP/"):
        (c_head, _, captured), (l_head, _, live) = captured.partition("\n\n"), live.partition("\n\n")
        if text_shape(c_head) != text_shape(l_head):
            return f"status or headers differ:\ncaptured {c_head!r}\nlive     {l_head!r}"
    (c_docs, c_text), (l_docs, l_text) = split_output(captured), split_output(live)
    c_shape, l_shape = [json_shape(d) for d in c_docs], [json_shape(d) for d in l_docs]
    if len(c_shape) != len(l_shape) or not all(map(_shapes_match, c_shape, l_shape)):
        return f"JSON shape differs:\ncaptured {c_shape}\nlive     {l_shape}"
    if text_shape(c_text) != text_shape(l_text):
        return f"output differs:\ncaptured {text_shape(c_text)}\nlive     {text_shape(l_text)}"
    return None


# -- model cards -------------------------------------------------------------------------------


def card_top1() -> dict[tuple[str, str], tuple[str, float]]:
    """``{(role, photo): (label, probability)}`` from the cards of the models the stack serves."""
    from twopass.models.card import card_path

    settings = Settings()
    out: dict[tuple[str, str], tuple[str, float]] = {}
    for role, model in (("fast", settings.fast_model), ("slow", settings.slow_model)):
        card = json.loads(card_path(Path(model)).read_text())
        for photo, top in card["metrics"]["top1"].items():
            out[role, photo] = (top["label"], float(top["prob"]))
    return out


def card_mismatches(found: Sequence[Fact]) -> list[str]:
    """Facts that disagree with the cards (labels exactly, probabilities to the cards' two decimals)."""
    cards = card_top1()
    wrong = []
    for fact in found:
        label, prob = cards[fact.role, fact.photo]
        shown_prob = prob if fact.probability is None else round(fact.probability, 2)
        if fact.label != label or shown_prob != round(prob, 2):
            wrong.append(f"{fact.role} {fact.photo}: shown {fact.label} {fact.probability}, card {label} {prob}")
    return wrong
