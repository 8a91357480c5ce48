"""``make sam-local FAST_MODEL=DIR SLOW_MODEL=DIR``, checked offline (no Docker, no SAM CLI): the fast
pack reaches the function's container through the emulator's S3 (the env-vars file names it there,
and it loads from there as a container would load it), the worker on this host gets both packs, and
packs that cannot serve together stop ``make sam-local`` before anything starts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.modelpacks import FLOWERS, flat_image, write_pack
from twopass import aws
from twopass.local import samlocal
from twopass.local.provision import API_FUNCTION
from twopass.models.card import sha256_file
from twopass.models.runtime import Classifier
from twopass.models.source import S3Source

GREEN = (0, 255, 0)


@pytest.fixture
def moto() -> Iterator[None]:
    """moto in-process standing in for the emulator (the clients of SamLocal and of twopass.aws alike)."""
    from moto import mock_aws

    aws.reset_clients()
    with mock_aws():
        yield
    aws.reset_clients()


def emulator_client(service: str) -> Any:
    return boto3.client(service, region_name="us-east-1")


@pytest.fixture
def packs(tmp_path: Path) -> dict[str, Path]:
    return {
        "fast": write_pack(tmp_path / "fast", labels=FLOWERS, size=32, name="flowers-fast"),
        "slow": write_pack(tmp_path / "slow", labels=FLOWERS, size=48, layout="NHWC", name="flowers-slow"),
        "other": write_pack(tmp_path / "other", labels=("a", "b", "c", "d", "e"), size=32, name="other"),
    }


def runner(tmp_path: Path, **options: Any) -> samlocal.SamLocal:
    """A SamLocal whose emulator is moto in this process: everything but the child processes."""
    local = samlocal.SamLocal(
        env_file=tmp_path / "env.local.json", function_endpoint="http://172.17.0.1:4566", **options
    )
    local.client = emulator_client  # type: ignore[method-assign]
    return local


def test_the_fast_pack_reaches_the_function_through_the_emulators_s3(
    moto: None, packs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A model path of this host in the shell is never handed to the container.
    monkeypatch.setenv("TWOPASS_FAST_MODEL", "/home/me/elsewhere")
    monkeypatch.setenv("TWOPASS_SLOW_MODEL", "/home/me/elsewhere-slow")
    local = runner(tmp_path, fast_model=str(packs["fast"]), slow_model=str(packs["slow"]))
    path = local.create_resources()

    variables = json.loads(path.read_text())[API_FUNCTION]
    uri = f"s3://{samlocal.PACK_BUCKET}/{samlocal.FAST_PACK_PREFIX}"
    assert variables["TWOPASS_FAST_MODEL"] == uri
    assert "TWOPASS_SLOW_MODEL" not in variables  # the template's empty value: a worker's heartbeat tells
    assert variables["AWS_ENDPOINT_URL"] == "http://172.17.0.1:4566"  # where the container reads it from
    assert str(tmp_path) not in json.dumps(variables)

    # What the container does with it (twopass.models.source, against the emulator): the same pack,
    # its card now carrying the model's sha256, which the copy is verified against.
    local_copy = S3Source(cache_dir=tmp_path / "container-tmp").fetch(uri)
    card = json.loads((local_copy / "card.json").read_text())
    assert card["sha256"] == sha256_file(packs["fast"] / "model.onnx")
    classifier = Classifier(local_copy)
    assert classifier.labels == FLOWERS and classifier.card.name == "flowers-fast"
    assert classifier.predict(classifier.tensor(flat_image(GREEN), max_pixels=10**7)).label == "fern"


def test_the_worker_on_this_host_gets_both_packs_where_they_are(
    moto: None, packs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWOPASS_RESULT_CACHE", "1")  # a shell setting wins here as under make run
    local = runner(tmp_path, fast_model=str(packs["fast"]), slow_model=str(packs["slow"]))
    local.create_resources()
    env = local.worker_env()
    assert env["TWOPASS_FAST_MODEL"] == str(packs["fast"])  # for the start-up check of both label sets
    assert env["TWOPASS_SLOW_MODEL"] == str(packs["slow"])
    assert env["TWOPASS_RESULT_CACHE"] == "1" and local.function_vars["TWOPASS_RESULT_CACHE"] == "1"
    assert env["TWOPASS_QUEUE_URL"] == local.function_vars["TWOPASS_QUEUE_URL"]


def test_without_packs_the_function_keeps_the_bundled_model(moto: None, tmp_path: Path) -> None:
    local = runner(tmp_path)
    variables = json.loads(local.create_resources().read_text())[API_FUNCTION]
    assert "TWOPASS_FAST_MODEL" not in variables  # the template's /opt path: the layer's model
    buckets = {b["Name"] for b in emulator_client("s3").list_buckets()["Buckets"]}
    assert variables["TWOPASS_PAYLOAD_BUCKET"] in buckets and samlocal.PACK_BUCKET not in buckets  # nothing copied
    assert samlocal.container_model(emulator_client("s3"), None) is None
    # An s3:// location is read from the emulator as it is, nothing copied.
    assert samlocal.container_model(emulator_client("s3"), "s3://mine/fast/") == "s3://mine/fast/"


def test_a_bundled_style_model_with_its_card_beside_it_is_published_as_a_pack(moto: None, tmp_path: Path) -> None:
    from twopass.config import REPO_ROOT

    model = REPO_ROOT / "layers" / "models" / "fast" / "efficientnet-lite0-int8.onnx"
    uri = samlocal.publish_pack(emulator_client("s3"), str(model), prefix="bundled/")
    keys = {o["Key"] for o in emulator_client("s3").list_objects_v2(Bucket=samlocal.PACK_BUCKET)["Contents"]}
    assert uri == f"s3://{samlocal.PACK_BUCKET}/bundled/"
    # imagenet-1k names the bundled class names: no labels file to copy.
    assert keys == {"bundled/card.json", f"bundled/{model.name}"}


def test_the_command_line_and_the_sam_arguments_for_packs(
    packs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["--fast-model", str(packs["fast"]), "--slow-model", str(packs["slow"]), "--emulator-host", "127.0.0.1",
            "--function-endpoint", "http://127.0.0.1:4566", "--", "--warm-containers", "EAGER"]  # fmt: skip
    own, sam_args = samlocal._split_sam_args(argv)
    local = samlocal._runner(samlocal.parser().parse_args(own), sam_args)
    assert (local.fast_model, local.slow_model) == (str(packs["fast"]), str(packs["slow"]))
    command = samlocal.start_api_command(
        "sam", env_file=local.env_file, host="127.0.0.1", port=3000, region="us-east-1", extra=local.sam_args
    )
    # The container reads the pack from the emulator, so SAM mounts nothing of this host for it.
    assert command == ["sam", "local", "start-api", "--env-vars", str(local.env_file), "--host", "127.0.0.1",
                       "--port", "3000", "--region", "us-east-1", "--warm-containers", "EAGER"]  # fmt: skip
    assert not any(str(packs["fast"]) in arg for arg in command)
    # TWOPASS_FAST_MODEL / TWOPASS_SLOW_MODEL in the shell are the defaults, as for make run.
    monkeypatch.setenv("TWOPASS_FAST_MODEL", str(packs["fast"]))
    monkeypatch.setenv("TWOPASS_SLOW_MODEL", str(packs["slow"]))
    args = samlocal.parser().parse_args([])
    assert (args.fast_model, args.slow_model) == (str(packs["fast"]), str(packs["slow"]))


@pytest.mark.parametrize(
    ("fast", "slow", "line"),
    [
        ("fast", "other", "have different label sets (5 vs 5 labels, e.g. 'a', 'b', 'c' in only one)"),
        ("missing", "slow", "no such model file or pack directory"),
    ],
)
def test_packs_that_cannot_serve_together_stop_it_before_anything_starts(
    packs: dict[str, Path], capsys: pytest.CaptureFixture[str], fast: str, slow: str, line: str, tmp_path: Path
) -> None:
    where = {**packs, "missing": tmp_path / "missing"}
    # Refused before Docker, the SAM CLI or the emulator is looked at: --sam names nothing that exists.
    code = samlocal.main(
        ["--fast-model", str(where[fast]), "--slow-model", str(where[slow]), "--sam", "/nonexistent/sam"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("make sam-local: ") and line in err and "\n" not in err
    assert samlocal.check_models(str(packs["fast"]), str(packs["slow"])) is None
