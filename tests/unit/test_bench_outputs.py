"""``make bench`` ends well whatever is installed: outputs written, PNG optional, dated summary for full runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench.run import SECTIONS, parse_args, write_outputs

RESULTS = {
    "meta": {"started": "2026-11-29T10:00:00+00:00", "quick": False, "duration_s": 1.0, "machine": {"cpus": 2}},
    "targets": [
        {"name": "cold start (s)", "goal": "≤ 1.0", "value": 1.61, "threshold": 1.0, "met": False, "note": "imports"}
    ],
}


def test_a_run_without_matplotlib_still_writes_json_and_markdown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    text = write_outputs(RESULTS, tmp_path, full=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "latest.md"]
    assert json.loads((tmp_path / "latest.json").read_text())["targets"][0]["value"] == 1.61
    assert (tmp_path / "latest.md").read_text() == text + "\n"
    assert "| cold start (s) | ≤ 1.0 | 1.61 | ❌ imports |" in text


def test_a_full_run_also_writes_its_dated_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = write_outputs(RESULTS, tmp_path, full=True)
    assert (tmp_path / "2026-11-29.md").read_text() == text + "\n"


def test_every_section_is_on_by_default() -> None:
    assert parse_args([]).sections == list(SECTIONS)


def test_a_full_length_run_of_some_sections_writes_a_dated_summary_named_after_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    text = write_outputs(RESULTS, tmp_path, full=False, sections=["capacity", "stack"])
    assert (tmp_path / "2026-11-29-capacity-stack.md").read_text() == text + "\n"
