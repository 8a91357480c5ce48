"""``twopass calibrate``: the sweep and its recommendation, the augmented views, and the command on real photos."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import PHOTOS
from twopass import cli
from twopass.tools import calibrate
from twopass.tools.calibrate import Observation, recommend, row_at, sweep, thresholds, views


def obs(fast_class: int, probability: float, slow_class: int, truth: str | None = None) -> Observation:
    return Observation("img", "original", fast_class, f"class {fast_class}", probability, slow_class,
                       f"class {slow_class}", truth)  # fmt: skip


# -- the sweep ------------------------------------------------------------------------------------------

OBSERVATIONS = [
    obs(1, 0.95, 1),  # confident and right
    obs(2, 0.90, 2),
    obs(3, 0.60, 4),  # fairly confident and wrong: only a threshold above 0.60 protects it
    obs(5, 0.30, 5),
    obs(6, 0.20, 7),
]


def test_row_counts_saved_passes_and_agreement() -> None:
    row = row_at(OBSERVATIONS, 0.5)
    assert row.answered_fast == 3 and row.saved == pytest.approx(0.6)
    assert row.agreement == pytest.approx(0.8)  # the 0.60 view answers wrong; every slow answer agrees
    assert row.accuracy is None
    assert row_at(OBSERVATIONS, 0.61).agreement == 1.0 and row_at(OBSERVATIONS, 0.61).saved == pytest.approx(0.4)
    everything = row_at(OBSERVATIONS, 0.01)
    assert everything.saved == 1.0 and everything.agreement == pytest.approx(0.6)


def test_recommendation_is_the_lowest_threshold_meeting_the_target() -> None:
    rows = sweep(OBSERVATIONS, thresholds(0.01))
    best = recommend(rows, 0.99)
    assert best is not None and best.threshold == 0.61 and best.saved == pytest.approx(0.4)
    # Above 0.20 the last view goes to the slow model; the 0.60 one still answers wrongly: 4 of 5.
    looser = recommend(rows, 0.8)
    assert looser is not None and looser.threshold == 0.21 and looser.agreement == pytest.approx(0.8)
    # Nothing reaches the target when even the surest fast answers are wrong.
    assert recommend(sweep([obs(1, 1.0, 2)], thresholds(0.01)), 0.99) is None


def test_accuracy_against_folder_labels() -> None:
    labelled = [obs(1, 0.9, 1, "class 1"), obs(2, 0.9, 3, "class 3"), obs(4, 0.1, 5, "class 5")]
    assert row_at(labelled, 0.5).accuracy == pytest.approx(2 / 3)  # the 2-vs-3 view answers fast, wrongly
    assert row_at(labelled, 0.95).accuracy == 1.0
    assert calibrate.normalise_label("Tiger_Cat") == calibrate.normalise_label("tiger-cat") == "tiger cat"


def test_thresholds_grid() -> None:
    grid = thresholds(0.05)
    assert grid[0] == 0.05 and grid[-1] == 1.0 and len(grid) == 20


# -- views ------------------------------------------------------------------------------------------------


def test_augmented_views_are_crops_flips_and_scales_and_reproducible(cat_jpeg: bytes) -> None:
    made = views(cat_jpeg, augment=True)
    names = [name for name, _ in made]
    assert names[0] == "original" and made[0][1] == cat_jpeg
    assert {"flip", "crop-centre-80", "scale-50", "scale-25"} <= set(names) and len(names) == 10
    original = Image.open(io.BytesIO(cat_jpeg))
    sizes = {name: Image.open(io.BytesIO(data)).size for name, data in made}
    assert sizes["scale-50"] == (round(original.width / 2), round(original.height / 2))
    assert sizes["crop-top-left-70"] == (round(original.width * 0.7), round(original.height * 0.7))
    assert views(cat_jpeg, augment=True) == made  # byte for byte
    assert views(cat_jpeg, augment=False) == [("original", cat_jpeg)]


# -- the command on the bundled photos ---------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["calibrate", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def augmented_json() -> dict[str, Any]:
    # One run over the bundled photos and their augmented views, shared by the checks below.
    buffer = io.StringIO()
    import contextlib

    with contextlib.redirect_stdout(buffer):
        assert cli.main(["calibrate", str(PHOTOS), "--augment", "--json"]) == 0
    data: dict[str, Any] = json.loads(buffer.getvalue())
    return data


def test_calibration_on_the_bundled_photos_and_their_views(augmented_json: dict[str, Any]) -> None:
    data = augmented_json
    assert data["files"] == 3 and data["views"] == 30
    assert data["fast_model"]["name"] == "efficientnet-lite0" and data["slow_model"]["name"] == "efficientnet-lite2"
    best = data["recommended"]
    assert best is not None and best["agreement"] >= 0.99
    lower = [r for r in data["thresholds"] if r["threshold"] < best["threshold"]]
    assert all(r["agreement"] < 0.99 for r in lower)  # the lowest that meets the target
    saved = [r["saved"] for r in data["thresholds"]]
    assert saved == sorted(saved, reverse=True)  # a higher threshold never saves more
    # On the originals the card's figures hold: coffee's fast top-1 is espresso at 0.92.
    coffee = [o for o in data["observations"] if o["image"].endswith("coffee.jpg") and o["view"] == "original"]
    assert coffee[0]["fast_label"] == "espresso" and coffee[0]["fast_probability"] == pytest.approx(0.92, abs=0.01)


def test_calibration_is_reproducible(augmented_json: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(PHOTOS), "--augment", "--json")
    assert code == 0 and json.loads(out) == augmented_json


def test_table_labels_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for folder, name in (("espresso", "coffee.jpg"), ("Egyptian_cat", "chelsea.jpg")):
        (tmp_path / folder).mkdir()
        shutil.copy(PHOTOS / name, tmp_path / folder / name)
    png = tmp_path / "curves.png"
    code, out, _ = run(capsys, str(tmp_path), "--labels-from-folders", "--plot", str(png), "--target-agreement", "1")
    assert code == 0
    assert "accuracy against folder names: fast 50.0%, slow 100.0%" in out  # fast says tiger cat on chelsea
    # The lowest threshold that keeps full agreement: above the fast model's top-1 on chelsea (0.3 to
    # 0.5 depending on the last bits of the resampling), and the deploy line names the same value.
    recommended = re.search(r"Recommended threshold: (0\.\d\d)", out)
    assert recommended and 0.3 <= float(recommended.group(1)) <= 0.5
    assert f"CascadeThreshold={recommended.group(1)}" in out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (900, 560)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["/no/such/folder"], "no such file or folder"),
        (["--target-agreement", "1.5", "x"], "must be above 0"),
    ],
)
def test_usage_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and message in err


def test_a_folder_without_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    code, _, err = run(capsys, str(tmp_path))
    assert code == 2 and "no image files" in err


def test_an_undecodable_file_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    shutil.copy(PHOTOS / "coffee.jpg", tmp_path / "coffee.jpg")
    code, out, err = run(capsys, str(tmp_path), "--json")
    assert code == 0 and "skipped" in err and "broken.jpg" in err
    assert json.loads(out)["views"] == 1
