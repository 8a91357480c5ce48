"""checkov over template.yaml and the worker Dockerfile: no failed check. Checks that do not apply
are skipped inside the template (resource ``Metadata: checkov: skip``) or the Dockerfile
(``# checkov:skip=``), each with its written reason.

checkov pins its own boto3, so it usually lives in its own virtualenv: the test finds it through
``$CHECKOV`` (a path to the executable), next to this interpreter, in ``.venv-checkov/bin`` at the
repository root, or on ``PATH``. ``make test`` installs it; without it this test fails, by design.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from twopass.config import REPO_ROOT


def _checkov() -> str:
    candidates = [
        os.environ.get("CHECKOV", ""),
        str(Path(sys.executable).parent / "checkov"),
        str(REPO_ROOT / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov") or "",
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail(
        "checkov not found: python -m venv .venv-checkov && .venv-checkov/bin/pip install checkov "
        "(or set CHECKOV=/path/to/checkov)"
    )


def _run(path: Path, framework: str) -> dict[str, Any]:
    env = dict(os.environ)
    # Offline: no guideline download from the Prisma Cloud API, no policy download.
    env.update(BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false", LOG_LEVEL="WARNING")
    proc = subprocess.run(
        [_checkov(), "-f", str(path), "--framework", framework, "--quiet", "--compact", "--skip-download",
         "-o", "json"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert proc.stdout.strip(), f"checkov printed nothing (rc={proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    report = report[0] if isinstance(report, list) else report
    print(f"checkov {path.name}: {report['summary']}")
    return dict(report)


@pytest.mark.parametrize(
    ("relative", "framework"),
    [("template.yaml", "cloudformation"), ("infra/worker/Dockerfile", "dockerfile")],
)
def test_checkov_finds_nothing(relative: str, framework: str) -> None:
    report = _run(REPO_ROOT / relative, framework)
    failed = [
        f"{c['check_id']} {c['resource']}: {c['check_name']}"
        for c in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == []
    assert report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] > 0


def test_every_template_skip_has_a_reason() -> None:
    from twopass.local import template as tpl

    for logical_id, resource in tpl.load()["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert len(str(skip.get("comment", ""))) >= 40, f"{logical_id} skips {skip.get('id')} without a reason"


def test_every_dockerfile_skip_has_a_reason() -> None:
    for line in (REPO_ROOT / "infra" / "worker" / "Dockerfile").read_text().splitlines():
        if "checkov:skip=" in line:
            _, _, reason = line.partition("checkov:skip=")[2].partition(":")
            assert len(reason.strip()) >= 40, line
