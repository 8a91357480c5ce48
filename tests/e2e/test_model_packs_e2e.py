"""Your own model packs through the local stack: their labels on the fast and the slow path, in
``/metadata`` and the OIP model metadata; a broken pack stops the worker and ``twopass local`` at start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.helpers import api, final
from tests.modelpacks import FLOWERS, colour_weights, flat_image, write_pack
from twopass.config import REPO_ROOT
from twopass.local.stack import LocalStack, free_port

WIDE = tuple(f"class-{i:04d}" for i in range(1200))
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def packs(root: Path, kind: str) -> tuple[Path, Path, dict[tuple[int, int, int], str]]:
    """Fast and slow packs of one kind, and the label each wins with on a flat colour."""
    if kind == "flowers":  # a 5-class pair: NCHW RGB 64 px fast, NHWC BGR 48 px slow
        fast = write_pack(root / "fast", labels=FLOWERS, size=64, name="flowers-fast")
        slow = write_pack(
            root / "slow", labels=FLOWERS, size=48, layout="NHWC", channel_order="BGR", name="flowers-slow"
        )
        return fast, slow, {RED: "rose", GREEN: "fern", BLUE: "cornflower"}
    # 1,200 classes: logits fast, sigmoid (multi-label) slow
    weights = colour_weights(1200, winners=(1100, 1150, 1199))
    fast = write_pack(root / "fast", labels=WIDE, size=32, name="wide-fast", weights=weights)
    slow = write_pack(
        root / "slow",
        labels=WIDE,
        size=32,
        name="wide-slow",
        weights=weights,
        output="sigmoid",
        bias=np.full(1200, -1.0),
    )
    return fast, slow, {RED: "class-1100", GREEN: "class-1150", BLUE: "class-1199"}


@pytest.fixture(scope="module", params=["flowers", "wide"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = tmp_path_factory.mktemp(f"packs-{request.param}")
    fast, slow, expected = packs(root, request.param)
    local = LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=1,
        log_dir=root / "logs",
        env={
            "TWOPASS_POLL_WAIT_SECONDS": "1",
            "TWOPASS_HEARTBEAT_SECONDS": "1",
            "TWOPASS_FAST_MODEL": str(fast),
            "TWOPASS_SLOW_MODEL": str(slow),
        },
    )
    with local:
        yield request.param, local, expected


def test_your_labels_on_both_paths(served: Any) -> None:
    kind, stack, expected = served
    with api(stack) as client:
        jobs = {}
        for colour, label in expected.items():
            response = client.post("/predict", content=flat_image(colour), headers={"Content-Type": "image/png"})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body[f"{kind}-fast"] == label
            jobs[body["job_id"]] = label
        for job_id, label in jobs.items():
            done = final(client, job_id, timeout=60)
            assert done["status"] == "succeeded", done
            assert done[job_id]["prediction"] == label
            assert done["slow"]["model"] == f"{kind}-slow" and done["slow"]["label"] == label
            assert all(entry["label"] in (FLOWERS if kind == "flowers" else WIDE) for entry in done["slow"]["top_k"])


def test_metadata_and_oip_name_your_classes(served: Any) -> None:
    kind, stack, _ = served
    classes = 5 if kind == "flowers" else 1200
    with api(stack) as client:
        meta = client.get("/metadata").json()
        assert meta["prediction_structure"] == f"(1,{classes})"
        assert meta["output"]["labels"] == f"{classes} classes"
        assert meta["models"]["fast"]["labels"][:2] == list((FLOWERS if kind == "flowers" else WIDE)[:2])
        oip = client.get(f"/v2/models/{kind}-fast").json()
        assert oip["outputs"][0]["shape"] == [-1, classes]
    if kind == "flowers":
        assert meta["input"]["fast_model_input"] == "(N,3,64,64) float32 RGB"


def start_env(**models: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({f"TWOPASS_{k.upper()}": v for k, v in models.items()})
    env["PYTHONPATH"] = str(REPO_ROOT / "layers" / "twopass")
    return env


@pytest.fixture(scope="module")
def bad_packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-packs")
    good = write_pack(root / "good", labels=FLOWERS, size=32)
    mismatch = write_pack(root / "mismatch", labels=FLOWERS, size=32)
    (mismatch / "labels.txt").write_text("rose\nfern\n")
    other = write_pack(root / "other", labels=("a", "b", "c", "d", "e"), size=32)
    return {"good": good, "mismatch": mismatch, "other": other}


def test_worker_exits_at_start_with_one_line(bad_packs: dict[str, Path]) -> None:
    env = start_env(slow_model=str(bad_packs["mismatch"]), fast_model=str(bad_packs["good"]))
    env.update(TWOPASS_QUEUE_URL="http://127.0.0.1:9/queue/none", TWOPASS_TABLE_NAME="none")
    done = subprocess.run([sys.executable, "-m", "twopass.worker"], env=env, capture_output=True, timeout=60)
    assert done.returncode != 0
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last.startswith("twopass-worker cannot start: ")
    assert "the model scores 5 classes but the card has 2 labels" in last


@pytest.mark.parametrize(
    ("fast", "slow", "line"),
    [
        ("good", "mismatch", "the model scores 5 classes but the card has 2 labels"),
        ("good", "other", "have different label sets"),
    ],
)
def test_local_stack_refuses_to_start(bad_packs: dict[str, Path], fast: str, slow: str, line: str) -> None:
    env = start_env(fast_model=str(bad_packs[fast]), slow_model=str(bad_packs[slow]))
    command = [
        sys.executable,
        "-m",
        "twopass.local",
        "--api-port",
        str(free_port()),
        "--emulator-port",
        str(free_port()),
    ]
    done = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert err.startswith("twopass local: ") and line in err and err.count("\n") == 0
