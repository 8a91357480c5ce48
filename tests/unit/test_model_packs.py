"""Model packs: the card format, the generalised preprocessing, fail-fast validation, ``twopass model``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from PIL import Image

from tests.modelpacks import FLOWERS, MEAN, STD, build_model, colour_weights, flat_image, write_pack
from twopass import cli
from twopass.config import DATA_DIR, REPO_ROOT
from twopass.exceptions import ModelLoadError
from twopass.imaging import load_tensor, resize_and_crop
from twopass.models.card import ModelCard, Preprocessing, sha256_file
from twopass.models.labels import imagenet_labels
from twopass.models.pack import ModelPackError, check_pair, load_pack, preflight
from twopass.models.runtime import Classifier

SCHEMA = json.loads((DATA_DIR / "model-card.schema.json").read_text())
BUNDLED = sorted((REPO_ROOT / "layers" / "models").glob("*/*.card.json"))
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def label_of(classifier: Classifier, rgb: tuple[int, int, int]) -> str:
    return classifier.predict(classifier.tensor(flat_image(rgb), max_pixels=10**7)).label


# -- the card format -------------------------------------------------------------------------------


@pytest.mark.parametrize("card", BUNDLED, ids=lambda p: p.name)
def test_bundled_cards_are_packs_that_match_the_schema(card: Path) -> None:
    jsonschema.validate(json.loads(card.read_text()), SCHEMA)
    pack = load_pack(card.with_name(card.name.replace(".card.json", ".onnx")))
    assert pack.labels == imagenet_labels()
    assert pack.card.preprocessing.pixel_scale == 1.0 and pack.card.output == "logits"


def test_written_cards_match_the_schema(tmp_path: Path) -> None:
    pack = write_pack(tmp_path / "p", labels=FLOWERS, size=32)
    jsonschema.validate(json.loads((pack / "card.json").read_text()), SCHEMA)
    loaded = load_pack(pack)
    assert loaded.labels == FLOWERS
    # The labels file goes inline, so a worker's heartbeat card names the classes too.
    jsonschema.validate(loaded.card.to_dict(), SCHEMA)
    assert loaded.card.to_dict()["labels"] == list(FLOWERS)


def test_card_without_pixel_scale_reads_its_units_from_the_means() -> None:
    base = {"name": "m", "file": "m.onnx", "input_name": "x", "output_name": "y", "labels": ["a"]}
    unit = ModelCard.from_dict({**base, "preprocessing": {"input_size": 8, "mean": [0.5, 0.5, 0.5], "std": 0.25}})
    raw = ModelCard.from_dict({**base, "preprocessing": {"input_size": 8, "mean": 127.0, "std": 128.0}})
    assert unit.preprocessing.pixel_scale == 255.0
    assert raw.preprocessing.pixel_scale == 1.0


# -- preprocessing -----------------------------------------------------------------------------------


def test_nhwc_bgr_with_per_channel_mean_and_std() -> None:
    spec = Preprocessing(
        input_size=16, resize_shorter=16, mean=MEAN, std=STD, pixel_scale=255, layout="NHWC", channel_order="BGR"
    )
    tensor = load_tensor(flat_image((200, 100, 50)), spec, max_pixels=10**7)
    assert tensor.shape == (16, 16, 3)
    expected = [(v / 255 - m) / s for v, m, s in zip((200, 100, 50), MEAN, STD, strict=True)][::-1]
    assert np.allclose(tensor[5, 7], expected, atol=1e-5)


def test_nchw_rgb_raw_pixels_as_the_bundled_models() -> None:
    spec = Preprocessing.for_input(16)
    tensor = load_tensor(flat_image((200, 100, 50)), spec, max_pixels=10**7)
    assert tensor.shape == (3, 16, 16)
    assert np.allclose(tensor[:, 3, 3], [(200 - 127) / 128, (100 - 127) / 128, (50 - 127) / 128])


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_every_interpolation_keeps_the_centre_of_a_huge_strip(interpolation: str) -> None:
    # Red, a green middle fifth, blue: the centre crop is green, whatever the filter.
    strip = np.zeros((1, 30000, 3), dtype=np.uint8)
    strip[0, :12000], strip[0, 12000:18000], strip[0, 18000:] = RED, GREEN, BLUE
    image = Image.fromarray(np.repeat(strip, 2, axis=0))
    spec = Preprocessing(input_size=24, resize_shorter=32, interpolation=interpolation)
    out = np.asarray(resize_and_crop(image, spec))
    assert out.shape == (24, 24, 3)
    assert np.abs(out.astype(int) - GREEN).max() <= 2


def test_direct_resize_and_crop_fraction() -> None:
    # A 400x100 image: left half red, right half blue. A direct resize keeps both; a centre crop
    # (shorter side to 16/0.5 = 32) cuts a 16x16 square straddling the middle.
    pixels = np.zeros((100, 400, 3), dtype=np.uint8)
    pixels[:, :200], pixels[:, 200:] = RED, BLUE
    image = Image.fromarray(pixels)
    direct = np.asarray(resize_and_crop(image, Preprocessing(input_size=16, resize="direct")))
    assert direct.shape == (16, 16, 3)
    assert tuple(direct[8, 0]) == RED and tuple(direct[8, 15]) == BLUE
    cropped = np.asarray(resize_and_crop(image, Preprocessing(input_size=16, crop_fraction=0.5)))
    assert Preprocessing(input_size=16, crop_fraction=0.5).shorter_side == 32
    assert tuple(cropped[8, 0]) == RED and tuple(cropped[8, 15]) == BLUE


# -- serving a pack ------------------------------------------------------------------------------------


def test_five_class_nhwc_bgr_pack_names_its_own_classes(tmp_path: Path) -> None:
    classifier = Classifier(write_pack(tmp_path / "p", labels=FLOWERS, size=64, layout="NHWC", channel_order="BGR"))
    assert [label_of(classifier, c) for c in (RED, GREEN, BLUE)] == ["rose", "fern", "cornflower"]
    # Grey (128) is blue-ish only after ImageNet's mean/std: (0.502 - 0.406) / 0.225 is the largest.
    assert label_of(classifier, (128, 128, 128)) == "cornflower"
    result = classifier.predict(classifier.tensor(flat_image(RED), max_pixels=10**7)).result("flowers", 1.0)
    assert result["label"] == "rose" and {r["label"] for r in result["top_k"]} == set(FLOWERS)


def test_bgr_card_on_an_rgb_model_gets_the_colours_swapped(tmp_path: Path) -> None:
    # The same RGB-trained weights with a card that says BGR: red and blue trade places.
    folder = write_pack(tmp_path / "p", labels=FLOWERS, size=32, channel_order="BGR", weights=colour_weights(5))
    classifier = Classifier(folder)
    assert label_of(classifier, RED) == "cornflower" and label_of(classifier, BLUE) == "rose"


def test_more_than_a_thousand_classes(tmp_path: Path) -> None:
    labels = [f"class-{i:04d}" for i in range(1200)]
    classifier = Classifier(
        write_pack(tmp_path / "p", labels=labels, size=32, weights=colour_weights(1200, winners=(1100, 1150, 1199)))
    )
    assert [label_of(classifier, c) for c in (RED, GREEN, BLUE)] == ["class-1100", "class-1150", "class-1199"]
    assert classifier.predict(classifier.tensor(flat_image(BLUE), max_pixels=10**7)).class_ids[0] == 1199


def test_sigmoid_multi_label(tmp_path: Path) -> None:
    labels = ["red", "green", "blue", "never"]
    weights = colour_weights(4) * 2.5  # x in 0..1 (mean 0, std 1): logits -5..5 with the bias
    folder = write_pack(
        tmp_path / "p", labels=labels, size=32, output="sigmoid", weights=weights, bias=np.full(4, -5.0), threshold=0.5
    )
    card = json.loads((folder / "card.json").read_text())
    card["preprocessing"].update(mean=[0, 0, 0], std=[1, 1, 1], pixel_scale=255)
    (folder / "card.json").write_text(json.dumps(card))
    classifier = Classifier(folder)
    prediction = classifier.predict(classifier.tensor(flat_image((255, 255, 0)), max_pixels=10**7))
    assert set(prediction.over_threshold or ()) == {"red", "green"}
    assert prediction.probabilities[0] > 0.99 and prediction.probabilities[-1] < 0.01
    assert set(prediction.result("m", 1.0)["labels"]) == {"red", "green"}


# -- broken packs: one line each, before serving -----------------------------------------------------


def broken(tmp_path: Path, case: str) -> Path:
    folder = write_pack(tmp_path / case, labels=FLOWERS, size=32)
    card = json.loads((folder / "card.json").read_text())
    if case == "missing-labels":
        (folder / "labels.txt").unlink()
    elif case == "width-mismatch":
        (folder / "labels.txt").write_text("rose\nfern\ncornflower\ndaisy\n")
    elif case == "wrong-input-name":
        card["input_name"] = "images"
    elif case == "wrong-size":
        card["preprocessing"]["input_size"] = 224
    elif case == "wrong-layout":
        card["preprocessing"]["layout"] = "NHWC"
    elif case == "not-onnx":
        (folder / "model.onnx").write_bytes(b"this is not a model\n" * 10)
    elif case == "bad-field":
        card["preprocessing"]["interpolation"] = "area"
    elif case == "no-card":
        (folder / "card.json").unlink()
    if case != "no-card":
        (folder / "card.json").write_text(json.dumps(card))
    return folder


BROKEN = {
    "missing-labels": "the labels file 'labels.txt' is not in",
    "width-mismatch": "the model scores 5 classes but the card has 4 labels",
    "wrong-input-name": "the model has no input 'images' (it has 'pixel_values'); fix 'input_name'",
    "wrong-size": "is ('batch', 3, 32, 32) but the card gives (N,3,224,224) float32 RGB",
    "wrong-layout": "the model looks NCHW; set 'preprocessing.layout' to NCHW",
    "not-onnx": "not an ONNX model onnxruntime can load",
    "bad-field": "'preprocessing.interpolation' must be one of nearest, bilinear, bicubic, lanczos (got 'area')",
    "no-card": "a model pack needs one card.json (found none)",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_packs_are_refused_with_one_line(tmp_path: Path, case: str) -> None:
    folder = broken(tmp_path, case)
    with pytest.raises(ModelLoadError) as loading:
        Classifier(folder)
    with pytest.raises(ModelLoadError) as checking:
        preflight(str(folder), str(REPO_ROOT / "layers" / "models" / "slow" / "efficientnet-lite2-fp32.onnx"))
    for message in (str(loading.value), str(checking.value)):
        assert BROKEN[case] in message
        assert "\n" not in message


def test_a_changed_model_file_fails_its_sha256(tmp_path: Path) -> None:
    folder = write_pack(tmp_path / "p", labels=FLOWERS, size=32)
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = "0" * 64
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelPackError, match="does not match the card's sha256"):
        load_pack(folder)


def test_fast_and_slow_must_share_the_label_set(tmp_path: Path) -> None:
    fast = write_pack(tmp_path / "fast", labels=FLOWERS, size=32)
    same = write_pack(tmp_path / "same", labels=FLOWERS, size=48, layout="NHWC")
    other = write_pack(tmp_path / "other", labels=("a", "b", "c", "d", "e"), size=32)
    check_pair(str(fast), str(same))
    with pytest.raises(ModelPackError, match="different label sets"):
        check_pair(str(fast), str(other))
    with pytest.raises(ModelPackError, match="different label sets"):
        preflight(str(fast), str(REPO_ROOT / "layers" / "models" / "slow" / "efficientnet-lite2-fp32.onnx"))


def test_the_label_set_line_is_exact_and_there_is_no_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The line docs/models.md quotes: no label mapping exists, so a reordered or renamed class is refused."""
    fast = write_pack(tmp_path / "fast", labels=FLOWERS, size=32)
    reordered = write_pack(tmp_path / "reordered", labels=tuple(reversed(FLOWERS)), size=32)
    other = write_pack(tmp_path / "other", labels=("a", "b", "c", "d", "e"), size=32)
    rule = "both models must classify into the same classes in the same order"
    with pytest.raises(ModelPackError) as order:
        check_pair(str(fast), str(reordered))
    assert str(order.value) == (
        f"the fast pack ({fast}) and the slow pack ({reordered}) have different label sets "
        f"(the same names in a different order); {rule}"
    )
    with pytest.raises(ModelPackError) as names:
        check_pair(str(fast), str(other))
    assert str(names.value) == (
        f"the fast pack ({fast}) and the slow pack ({other}) have different label sets "
        f"(5 vs 5 labels, e.g. 'a', 'b', 'c' in only one); {rule}"
    )
    # A pack that is not on this host is checked where it is (each service sees only its own).
    check_pair(str(fast), "s3://models/packs/slow/")
    # `twopass model check A --with B`, before the packs are uploaded: the same line, exit status 1.
    code, _, err = run_cli(["check", str(other), "--with", str(fast)], capsys)
    assert code == 1
    assert err.strip() == (
        f"error: the checked pack ({other}) and the --with pack ({fast}) have different label sets "
        f"(5 vs 5 labels, e.g. 'a', 'b', 'c' in only one); {rule}"
    )


# -- twopass model init / check ----------------------------------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["model", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_init_reads_the_graph_and_check_runs_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = build_model(tmp_path / "flowers.onnx", weights=colour_weights(5, bgr=True), size=40, layout="NHWC")
    (tmp_path / "labels.txt").write_text("\n".join(FLOWERS) + "\n")
    argv = ["init", str(model), "--labels", str(tmp_path / "labels.txt"), "--mean", "0.485,0.456,0.406"]
    argv += [
        "--std",
        "0.229,0.224,0.225",
        "--channel-order",
        "BGR",
        "--crop-fraction",
        "0.9",
        "--out",
        str(tmp_path / "pack"),
    ]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "pack" / "card.json").read_text())
    jsonschema.validate(card, SCHEMA)
    assert card["input_name"] == "pixel_values" and card["preprocessing"]["layout"] == "NHWC"
    assert card["preprocessing"]["input_size"] == 40 and card["sha256"]
    assert "input        pixel_values (N,40,40,3) float32 BGR" in out and "labels       rose, fern" in out
    classifier = Classifier(tmp_path / "pack")
    assert [label_of(classifier, c) for c in (RED, GREEN, BLUE)] == ["rose", "fern", "cornflower"]


def test_init_without_labels_and_check_of_a_broken_pack_fail_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_model(tmp_path / "m.onnx", weights=colour_weights(5), size=32)
    code, _, err = run_cli(["init", str(model), "--out", str(tmp_path / "p")], capsys)
    assert code == 1 and err.startswith("error: no labels: give --labels") and err.count("\n") == 1
    code, _, err = run_cli(["check", str(broken(tmp_path, "width-mismatch"))], capsys)
    assert code == 1 and "the model scores 5 classes but the card has 4 labels" in err and err.count("\n") == 1


def test_init_from_a_hugging_face_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "hf"
    build_model(export / "model.onnx", weights=colour_weights(5), size=48)
    (export / "config.json").write_text(json.dumps({"id2label": {str(i): name for i, name in enumerate(FLOWERS)}}))
    (export / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "do_resize": True,
                "size": {"shortest_edge": 56},
                "do_center_crop": True,
                "crop_size": {"height": 48, "width": 48},
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(MEAN),
                "image_std": list(STD),
            }
        )
    )
    code, _, err = run_cli(["init", "--from", str(export), "--out", str(tmp_path / "pack")], capsys)
    assert code == 0, err
    pre = json.loads((tmp_path / "pack" / "card.json").read_text())["preprocessing"]
    assert pre["resize_shorter"] == 56 and pre["input_size"] == 48 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == list(MEAN) and pre["pixel_scale"] == 255.0
    assert [label_of(Classifier(tmp_path / "pack"), c) for c in (RED, GREEN, BLUE)] == ["rose", "fern", "cornflower"]


def test_init_from_a_timm_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "timm"
    build_model(export / "model.onnx", weights=colour_weights(5), size=64)
    config = {
        "architecture": "mobilenetv3_small_100",
        "num_classes": 5,
        "label_names": list(FLOWERS),
        "pretrained_cfg": {
            "input_size": [3, 64, 64],
            "interpolation": "bilinear",
            "crop_pct": 0.9,
            "mean": list(MEAN),
            "std": list(STD),
        },
    }
    (export / "config.json").write_text(json.dumps(config))
    code, _, err = run_cli(["init", "--from", str(export), "--out", str(tmp_path / "pack")], capsys)
    assert code == 0, err
    card = json.loads((tmp_path / "pack" / "card.json").read_text())
    assert card["name"] == "mobilenetv3_small_100"
    assert card["preprocessing"]["crop_fraction"] == 0.9 and card["preprocessing"]["interpolation"] == "bilinear"
    assert [label_of(Classifier(tmp_path / "pack"), c) for c in (RED, GREEN, BLUE)] == ["rose", "fern", "cornflower"]


def test_calibrate_labels_from_folders_uses_the_packs_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fast = write_pack(tmp_path / "fast", labels=FLOWERS, size=32)
    slow = write_pack(tmp_path / "slow", labels=FLOWERS, size=48, layout="NHWC", channel_order="BGR")
    for folder, colour in (("rose", RED), ("fern", GREEN), ("cornflower", BLUE)):
        (tmp_path / "images" / folder).mkdir(parents=True)
        (tmp_path / "images" / folder / "a.png").write_bytes(flat_image(colour))
    argv = [str(tmp_path / "images"), "--labels-from-folders", "--fast-model", str(fast), "--slow-model", str(slow)]
    assert cli.main(["calibrate", *argv]) == 0
    assert "accuracy against folder names: fast 100.0%, slow 100.0%" in capsys.readouterr().out
    (tmp_path / "images" / "tiger_cat").mkdir()
    (tmp_path / "images" / "tiger_cat" / "b.png").write_bytes(flat_image(RED))
    assert cli.main(["calibrate", *argv]) == 2
    assert "folder(s) tiger_cat name no class of the model pack" in capsys.readouterr().err


# -- packs in S3 ---------------------------------------------------------------------------------------


def test_a_pack_in_s3_is_fetched_once_per_version_and_verified(tmp_path: Path) -> None:
    from moto import mock_aws

    from twopass import aws
    from twopass.models.source import S3Source

    folder = write_pack(tmp_path / "p", labels=FLOWERS, size=32)
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "card.json").write_text(json.dumps(card))
    with mock_aws():
        aws.reset_clients()
        s3 = aws.client("s3")
        s3.create_bucket(Bucket="models")
        for name in ("card.json", "model.onnx", "labels.txt"):
            s3.upload_file(str(folder / name), "models", f"packs/flowers/{name}")
        source = S3Source(cache_dir=tmp_path / "cache")
        local = source.fetch("s3://models/packs/flowers/")
        classifier = Classifier(local)
        assert label_of(classifier, GREEN) == "fern" and classifier.labels == FLOWERS
        # The same version again: the cached copy, nothing downloaded (the objects are gone).
        for name in ("model.onnx", "labels.txt"):
            s3.delete_object(Bucket="models", Key=f"packs/flowers/{name}")
        assert source.fetch("s3://models/packs/flowers") == local
        # A card without the model's digest is refused: nothing could check the download.
        del card["sha256"]
        s3.put_object(Bucket="models", Key="packs/bare/card.json", Body=json.dumps(card).encode())
        with pytest.raises(ModelPackError, match="needs the model's sha256"):
            source.fetch("s3://models/packs/bare/")
    aws.reset_clients()


def test_the_api_answers_503_with_the_line_and_health_says_why(tmp_path: Path, aws: Any, cat_jpeg: bytes) -> None:
    from fastapi.testclient import TestClient

    from twopass.api.app import create_app
    from twopass.api.services.service import TwopassService
    from twopass.jobs.dynamodb import DynamoJobStore
    from twopass.queue.sqs import SqsPublisher

    fast = str(broken(tmp_path, "wrong-input-name"))
    settings = aws.replace(fast_model=fast, slow_model=str(write_pack(tmp_path / "slow", labels=FLOWERS, size=32)))
    service = TwopassService(settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url))
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        answer = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 503, answer.text
        assert BROKEN["wrong-input-name"] in answer.text
        health = client.get("/health/all").json()
        assert health["status"] == "degraded"
        assert health["backends"]["fast_model"]["status"] == "error"
        assert BROKEN["wrong-input-name"] in health["backends"]["fast_model"]["detail"]
    # A valid fast pack whose classes are not the slow pack's is refused the same way.
    settings = aws.replace(fast_model=str(write_pack(tmp_path / "fast", labels=FLOWERS, size=32)))
    service = TwopassService(settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url))
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        answer = client.post("/predict", content=cat_jpeg, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 503 and "have different label sets" in answer.text
