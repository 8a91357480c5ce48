"""The README and docs/ stay true to the code: every setting, template parameter, make target and link
they name, the generated configuration table, and what the captured outputs say about the bundled photos
(that the captures still match the running stack is tests/e2e/test_captured_docs.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

from infra.docs import compare, examples, markers, settings_table
from twopass.config import REPO_ROOT, Settings
from twopass.local import template as tpl

README = REPO_ROOT / "README.md"
DOCS = sorted((REPO_ROOT / "docs").glob("*.md"))


def _text(path: Path) -> str:
    return path.read_text()


def test_every_setting_is_documented() -> None:
    page = _text(REPO_ROOT / "docs" / "configuration.md")
    missing = [f.metadata["env"] for f in fields(Settings) if f"`{f.metadata['env']}`" not in page]
    assert missing == []


def test_every_template_parameter_is_documented() -> None:
    page = _text(REPO_ROOT / "docs" / "deploy.md")
    missing = [name for name in tpl.load()["Parameters"] if f"`{name}`" not in page]
    assert missing == []


def test_make_targets_named_in_the_docs_exist() -> None:
    makefile = _text(REPO_ROOT / "Makefile")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.M))
    assert {"run", "test"} <= set(re.findall(r"`make ([a-z-]+)", _text(README)))
    named = {name for page in [README, *DOCS] for name in re.findall(r"`make ([a-z-]+)", _text(page))}
    assert named <= targets


def test_relative_links_resolve() -> None:
    broken = []
    for page in [README, *DOCS]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", _text(page)):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)} -> {target}")
    assert broken == []


def test_readme_links_every_docs_page() -> None:
    readme = _text(README)
    assert [p.name for p in DOCS if f"(docs/{p.name})" not in readme] == []


def test_configuration_table_is_what_settings_says_now() -> None:
    # Names, types, defaults and meanings: regenerate with `make docs` after changing config.py.
    committed = markers.read(_text(REPO_ROOT / "docs" / "configuration.md"), settings_table.REGION)
    assert committed == settings_table.render()


@dataclass(frozen=True)
class _Sample:
    #: How long to wait, in ``seconds``.
    #: A second line | with a pipe.
    wait: float = field(default=1.5, metadata={"env": "SAMPLE_WAIT"})
    flag: bool = field(default=False, metadata={"env": "SAMPLE_FLAG"})


@dataclass(frozen=True)
class _Documented:
    #: Models tried in order.
    order: tuple[str, ...] = field(default=("a", "b"), metadata={"env": "SAMPLE_ORDER"})
    #: Where it is.
    where: str = field(default="", metadata={"env": "SAMPLE_WHERE"})


def test_table_rows_carry_type_default_and_meaning() -> None:
    assert settings_table.render(_Documented).splitlines()[2:] == [
        "| `SAMPLE_ORDER` | comma-separated list | `a,b` | Models tried in order. |",
        "| `SAMPLE_WHERE` | text | — | Where it is. |",
    ]


def test_a_setting_without_a_meaning_is_refused() -> None:
    with pytest.raises(settings_table.UndocumentedSettingError, match=r"_Sample\.flag"):
        settings_table.render(_Sample)
    assert (
        settings_table.field_docs(_Sample)["wait"] == "How long to wait, in ``seconds``. A second line | with a pipe."
    )


def test_the_check_fails_on_a_stale_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    page = tmp_path / "configuration.md"
    stale = settings_table.render().replace("| `16` |", "| `8` |")
    assert stale != settings_table.render()
    page.write_text(f"intro\n<!-- begin settings -->\n{stale}<!-- end settings -->\n")
    monkeypatch.setattr(settings_table, "PAGE", page)
    assert settings_table.main(["--check"]) == 1
    assert settings_table.main([]) == 0
    assert settings_table.main(["--check"]) == 0
    assert page.read_text().startswith("intro\n")


def test_every_captured_region_belongs_to_an_example() -> None:
    regions = {
        (page, name) for page in [README, *DOCS] for name in markers.names(_text(page)) if name.startswith("capture.")
    }
    assert regions == {(example.page, example.region) for example in examples.EXAMPLES}


@pytest.mark.parametrize("example", examples.EXAMPLES, ids=lambda e: e.name)
def test_captured_answers_agree_with_the_model_cards(example: examples.Example) -> None:
    found = compare.facts(example, markers.read(_text(example.page), example.region))
    assert compare.card_mismatches(found) == []


def test_the_captures_show_both_models_on_every_bundled_photo() -> None:
    found = {
        (fact.role, fact.photo)
        for example in examples.EXAMPLES
        for fact in compare.facts(example, markers.read(_text(example.page), example.region))
    }
    assert found == {(role, photo) for role in ("fast", "slow") for photo in ("astronaut", "chelsea", "coffee")}


def test_card_check_refuses_stale_figures() -> None:
    # The README's figures before the int8 model was recalibrated: Egyptian cat 0.58, espresso 0.40.
    stale = [
        examples.Fact("fast", "chelsea", "Egyptian cat", 0.578488),
        examples.Fact("fast", "coffee", "espresso", 0.398),
    ]
    assert len(compare.card_mismatches(stale)) == 2
    current = [
        examples.Fact("fast", "chelsea", "tiger cat", 0.399937),
        examples.Fact("fast", "chelsea", "tiger cat", None),
    ]
    assert compare.card_mismatches(current) == []


ID_A, ID_B = "a" * 32, "b" * 32


def test_json_shape_ignores_values_but_not_keys_order_or_kinds() -> None:
    captured = f'{{"job_id":"{ID_A}","status":"queued","fast":{{...}},"{ID_A}":{{"prediction":"tabby"}}}}'
    same = f'{{"job_id":"{ID_B}","status":"running","fast":{{"x":1}},"{ID_B}":{{"prediction":"lynx"}}}}'
    assert compare.shape_mismatch(captured, same) is None
    for changed in (
        f'{{"status":"queued","job_id":"{ID_B}","fast":{{}},"{ID_B}":{{"prediction":"x"}}}}',  # order
        f'{{"job_id":"{ID_B}","status":null,"fast":{{}},"{ID_B}":{{"prediction":"x"}}}}',  # kind
        f'{{"job_id":"{ID_B}","status":"queued","fast":{{}}}}',  # a key gone
        f'{{"job_id":"{ID_B}","status":"queued","fast":{{}},"{ID_B}":{{"prediction":"x","extra":1}}}}',  # one more
    ):
        assert compare.shape_mismatch(captured, changed) is not None, changed


def test_text_shape_ignores_ids_numbers_labels_and_spacing_but_not_words() -> None:
    captured = (
        f"FILE    FAST              JOB\ntests/data/chelsea.jpg  tiger cat (0.41)  {ID_A}  queued\n1 file: 1 queued"
    )
    same = f"FILE    FAST                  JOB\ntests/data/chelsea.jpg  Egyptian cat (0.58)  {ID_B}  queued\n1 file: 1 queued"
    assert compare.shape_mismatch(captured, same) is None
    assert compare.shape_mismatch(captured, same.replace("queued", "failed")) is not None
    assert compare.shape_mismatch(captured, same.replace("FAST", "QUICK")) is not None
    assert compare.shape_mismatch(captured, same + "\nexit 1") is not None


def test_http_captures_compare_status_and_content_type() -> None:
    captured = 'HTTP/1.1 404 Not Found\ncontent-type: application/json\n\n{"error":"not_found","detail":"no job"}'
    assert compare.shape_mismatch(captured, captured.replace("no job", "none")) is None
    assert compare.shape_mismatch(captured, captured.replace("404 Not Found", "500 Internal Server Error")) is not None
    assert compare.shape_mismatch(captured, captured.replace('"detail"', '"message"')) is not None


def test_pages_show_the_make_run_address_not_the_capture_stack_one() -> None:
    for example in examples.EXAMPLES:
        body = markers.read(_text(example.page), example.region)
        # 3000 is `make run`'s API; 9 the closed port of the unreachable-server example.
        assert set(re.findall(r"http://127\.0\.0\.1:(\d+)", body)) <= {"3000", "9"}, example.region
