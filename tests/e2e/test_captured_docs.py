"""The outputs README.md and docs/ show were captured from the running stack and still match it.

Each example of ``infra/docs/examples.py`` runs again here against the shared local stack: its
commands must be the ones the page shows, every answer must have the shape the page shows (JSON
keys in order and kinds of values; text line by line with ids, times, numbers and labels set
aside), and what it says about the bundled photos must agree with the committed model cards.
When the API changes on purpose, `make docs` recaptures the pages.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.docs import capture, compare, markers
from infra.docs.examples import EXAMPLES, Example
from twopass.local.stack import LocalStack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def live(stack: LocalStack) -> Iterator[capture.Session]:
    with capture.session(stack.api_url, stack.api_key or "") as session:
        yield session


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_captured_example_matches_the_running_stack(example: Example, live: capture.Session) -> None:
    committed = markers.read(example.page.read_text(), example.region)
    fresh = capture.run_example(example, live)
    shown, now = compare.parse_region(committed), compare.parse_region(fresh)
    assert [compare.JOB_ID.sub("<id>", s.command) for s in shown] == [
        compare.JOB_ID.sub("<id>", s.command) for s in now
    ], "the page shows other commands than the example runs: run `make docs`"
    for page, run in zip(shown, now, strict=True):
        mismatch = compare.shape_mismatch(page.output, run.output)
        assert mismatch is None, (
            f"{example.region}: `{page.command}` answers differently now (`make docs`?): {mismatch}"
        )
    # The stack itself still answers what the model cards say about the bundled photos.
    assert compare.card_mismatches(compare.facts(example, fresh)) == []
