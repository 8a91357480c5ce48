"""The Open Inference Protocol (KServe v2) routes over the real app, the fast model and moto.

Requests are built by hand here, byte for byte as the protocol and its binary tensor data extension
lay them out; tests/e2e/test_oip_clients.py calls the same routes with tritonclient itself.
"""

from __future__ import annotations

import base64
import copy
import gzip
import importlib.util
import io
import json
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CAT_LABELS, EVENTS
from tests.lambda_context import LambdaContext
from twopass.api.app import create_app
from twopass.api.errors import HTTPProblemError
from twopass.api.oip import codec as oip
from twopass.api.services.service import TwopassService
from twopass.config import REPO_ROOT, Settings
from twopass.exceptions import ImageTooLargeError
from twopass.imaging import MAX_SIDE, load_tensor
from twopass.jobs.dynamodb import DynamoJobStore
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels
from twopass.models.runtime import Classifier
from twopass.queue.sqs import SqsPublisher

KEY = "oip-key"
FAST = "efficientnet-lite0"
SLOW = "efficientnet-lite2"
INFER = f"/v2/models/{FAST}/infer"
Photo = Callable[[str], bytes]


@pytest.fixture
def service(aws: Settings, fast_classifier: Classifier) -> TwopassService:
    settings = aws.replace(api_keys=KEY)
    return TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), fast_classifier
    )


@pytest.fixture
def client(service: TwopassService) -> Iterator[TestClient]:
    with TestClient(create_app(service), raise_server_exceptions=False, headers={"x-api-key": KEY}) as c:
        yield c


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def queued(settings: Settings) -> int:
    attrs = boto3.client("sqs", region_name="us-east-1").get_queue_attributes(
        QueueUrl=settings.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def json_request(*images: bytes, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "image", "shape": [len(images)], "datatype": "BYTES", "data": [b64(i) for i in images]}
    return {"inputs": [tensor], **extra}


def binary_request(*images: bytes, **extra: Any) -> tuple[bytes, dict[str, str]]:
    """The binary tensor data extension, as tritonclient sends it: JSON, then length-prefixed elements."""
    raw = b"".join(struct.pack("<I", len(i)) + i for i in images)
    tensor = {
        "name": "image",
        "shape": [len(images), 1],
        "datatype": "BYTES",
        "parameters": {"binary_data_size": len(raw)},
    }
    head = json.dumps({"inputs": [tensor], **extra}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def binary_outputs(response: Any) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the JSON part, each output's raw bytes) of a response with binary outputs."""
    assert response.headers["content-type"] == "application/octet-stream"
    size = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:size])
    raw, offset = {}, size
    for output in head["outputs"]:
        length = output["parameters"]["binary_data_size"]
        raw[output["name"]] = response.content[offset : offset + length]
        offset += length
    assert offset == len(response.content)
    return head, raw


def strings(raw: bytes) -> list[str]:
    out, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        out.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    return out


def expected(classifier: Classifier, image: bytes) -> np.ndarray:
    """The fast model's probabilities for ``image``, computed here without the API."""
    logits = classifier.logits(load_tensor(image, classifier.card.preprocessing, max_pixels=40_000_000)[None])
    e = np.exp(logits[0] - logits[0].max())
    probabilities: np.ndarray = e / e.sum()
    return probabilities


def error_of(response: Any) -> str:
    """The protocol's error body: exactly ``{"error": "<text>"}``."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# ---------------------------------------------------------------- health and metadata


def test_live_and_ready_are_open_like_health(service: TwopassService) -> None:
    with TestClient(create_app(service), raise_server_exceptions=False) as anonymous:
        assert anonymous.get("/v2/health/live").json() == {"live": True}
        ready = anonymous.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        for path in ("/v2", f"/v2/models/{FAST}", f"/v2/models/{FAST}/ready"):
            refused = anonymous.get(path)
            assert refused.status_code == 403 and "x-api-key" in error_of(refused)
        refused = anonymous.post(INFER, json=json_request(b"x"))
        assert refused.status_code == 403 and "x-api-key" in error_of(refused)


def test_not_ready_when_the_fast_model_cannot_load(aws: Settings) -> None:
    settings = aws.replace(fast_model="/nowhere/model.onnx")
    service = TwopassService(settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url))
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        assert c.get("/v2/health/live").status_code == 200
        ready = c.get("/v2/health/ready")
        # The protocol: 200 means ready, a 4xx means not.
        assert ready.status_code == 400 and ready.json() == {"ready": False}
        metadata = c.get(f"/v2/models/{FAST}")
        assert metadata.status_code == 503 and metadata.headers["Retry-After"] and error_of(metadata)


def test_server_metadata(client: TestClient) -> None:
    body = client.get("/v2").json()
    assert body["name"] == "twopass" and body["version"]
    assert {"classification", "binary_tensor_data"} <= set(body["extensions"])


def test_both_models_metadata_comes_from_their_cards(client: TestClient, service: TwopassService) -> None:
    slow_card = ModelCard.load(card_path(Path(service.settings.slow_model)))
    for name, card in ((FAST, service.classifier.card), (SLOW, slow_card)):
        body = client.get(f"/v2/models/{name}").json()
        assert body == {
            "name": name,
            "versions": [card.version],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}],
        }
        assert client.get(f"/v2/models/{name}/versions/{card.version}").json() == body
        wrong = client.get(f"/v2/models/{name}/versions/9.9")
        assert wrong.status_code == 404 and card.version in error_of(wrong)


def test_unknown_model_is_404_in_the_protocols_shape(client: TestClient) -> None:
    for response in (
        client.get("/v2/models/resnet50"),
        client.get("/v2/models/resnet50/ready"),
        client.post("/v2/models/resnet50/infer", json=json_request(b"x")),
    ):
        assert response.status_code == 404 and "resnet50" in error_of(response)


def test_model_ready_fast_always_slow_with_a_live_worker(client: TestClient, service: TwopassService) -> None:
    assert client.get(f"/v2/models/{FAST}/ready").json() == {"name": FAST, "ready": True}
    idle = client.get(f"/v2/models/{SLOW}/ready")
    assert idle.status_code == 400 and idle.json() == {"name": SLOW, "ready": False}
    service.store.beat("worker-1", {"pid": 1})
    ready = client.get(f"/v2/models/{SLOW}/ready")
    assert ready.status_code == 200 and ready.json() == {"name": SLOW, "ready": True}


# ---------------------------------------------------------------- inference


def test_infer_json_returns_every_probability_and_queues_the_slow_job(
    client: TestClient, service: TwopassService, cat_jpeg: bytes
) -> None:
    response = client.post(INFER, json=json_request(cat_jpeg, id="req-7"))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["model_name"] == FAST and body["model_version"] == service.classifier.card.version
    assert body["id"] == "req-7"
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [1, 1000]
    probabilities = np.asarray(output["data"], dtype=np.float32)
    np.testing.assert_allclose(probabilities, expected(service.classifier, cat_jpeg), rtol=1e-4, atol=1e-6)
    assert imagenet_labels()[int(probabilities.argmax())] in CAT_LABELS
    # The slow job, as /predict queues it: readable at /job/{id} by the same key.
    job_id = body["parameters"]["twopass_job_id"]
    job = client.get(f"/job/{job_id}").json()
    assert job["status"] == "queued" and job[job_id] == {"prediction": None}
    assert queued(service.settings) == 1


def test_classification_in_tritons_format(client: TestClient, service: TwopassService, photo: Photo) -> None:
    coffee = photo("coffee.jpg")
    per_output = {"outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
    per_request = {"parameters": {"classification": 3}}
    want = expected(service.classifier, coffee)
    for extra in (per_output, per_request):
        (output,) = client.post(INFER, json=json_request(coffee, **extra)).json()["outputs"]
        assert output["datatype"] == "BYTES" and output["shape"] == [1, 3]
        entries = [entry.split(":", 2) for entry in output["data"]]
        assert entries[0][2] == "espresso"
        for score, index, label in entries:
            assert imagenet_labels()[int(index)] == label
            assert float(score) == pytest.approx(float(want[int(index)]), abs=2e-6)
        assert [int(i) for _, i, _ in entries] == list(np.argsort(-want)[:3])


def test_binary_request_several_images_binary_outputs(
    client: TestClient, service: TwopassService, cat_jpeg: bytes, photo: Photo
) -> None:
    images = [cat_jpeg, photo("coffee.jpg"), photo("astronaut.jpg")]
    body, headers = binary_request(
        *images,
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True}}],
    )
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200
    head, raw = binary_outputs(response)
    (output,) = head["outputs"]
    assert output["shape"] == [3, 1000] and output["datatype"] == "FP32"
    probabilities = np.frombuffer(raw["probabilities"], dtype="<f4").reshape(3, 1000)
    for row, image in zip(probabilities, images, strict=True):
        np.testing.assert_allclose(row, expected(service.classifier, image), rtol=1e-4, atol=1e-6)
    labels = [imagenet_labels()[int(i)] for i in probabilities.argmax(axis=1)]
    assert labels[0] in CAT_LABELS and labels[1] == "espresso"
    # One slow job per image, in input order.
    job_ids = head["parameters"]["twopass_job_id"].split(",")
    assert len(set(job_ids)) == 3 and queued(service.settings) == 3
    assert all(client.get(f"/job/{j}").json()["status"] == "queued" for j in job_ids)


def test_binary_classification_output_and_binary_data_output(client: TestClient, photo: Photo) -> None:
    body, headers = binary_request(photo("coffee.jpg"), parameters={"binary_data_output": True, "classification": 2})
    head, raw = binary_outputs(client.post(INFER, content=body, headers=headers))
    assert head["outputs"][0]["datatype"] == "BYTES" and head["outputs"][0]["shape"] == [1, 2]
    top = strings(raw["probabilities"])
    assert len(top) == 2 and top[0].endswith(":967:espresso")


def test_gzip_and_deflate_bodies(client: TestClient, photo: Photo) -> None:
    body, headers = binary_request(photo("coffee.jpg"), parameters={"classification": 1})
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))):
        response = client.post(INFER, content=packed, headers={**headers, "Content-Encoding": encoding})
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"][0].endswith(":espresso")
    refused = client.post(INFER, content=body, headers={**headers, "Content-Encoding": "br"})
    assert refused.status_code == 415 and "br" in error_of(refused)


@pytest.mark.parametrize("never", [False, "never"])
def test_fast_only_when_twopass_slow_is_false(
    client: TestClient, service: TwopassService, cat_jpeg: bytes, never: object
) -> None:
    response = client.post(INFER, json=json_request(cat_jpeg, cat_jpeg, parameters={"twopass_slow": never}))
    body = response.json()
    assert response.status_code == 200 and "parameters" not in body
    assert body["outputs"][0]["shape"] == [2, 1000]
    np.testing.assert_allclose(body["outputs"][0]["data"][:1000], expected(service.classifier, cat_jpeg), atol=1e-6)
    assert queued(service.settings) == 0


def test_twopass_slow_always_queues_like_predicts_slow_field(
    client: TestClient, service: TwopassService, cat_jpeg: bytes
) -> None:
    response = client.post(INFER, json=json_request(cat_jpeg, parameters={"twopass_slow": "always"}))
    job_id = response.json()["parameters"]["twopass_job_id"]
    assert client.get(f"/job/{job_id}").json()["status"] == "queued" and queued(service.settings) == 1


def test_inference_on_the_slow_model_points_at_the_job(
    client: TestClient, service: TwopassService, cat_jpeg: bytes
) -> None:
    response = client.post(f"/v2/models/{SLOW}/infer", json=json_request(cat_jpeg))
    assert response.status_code == 400
    message = error_of(response)
    assert "/job/{id}" in message and f"/v2/models/{FAST}/infer" in message and "twopass_job_id" in message
    assert queued(service.settings) == 0


def test_idempotency_key_replays_the_jobs_and_the_tensor(
    client: TestClient, service: TwopassService, cat_jpeg: bytes, photo: Photo
) -> None:
    for images in ([cat_jpeg], [cat_jpeg, photo("coffee.jpg")]):
        key = {"Idempotency-Key": f"retry-{len(images)}"}
        first = client.post(INFER, json=json_request(*images), headers=key)
        again = client.post(INFER, json=json_request(*images), headers=key)
        assert first.status_code == again.status_code == 200
        assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["parameters"] == first.json()["parameters"]
        np.testing.assert_allclose(again.json()["outputs"][0]["data"], first.json()["outputs"][0]["data"], rtol=1e-6)
    assert queued(service.settings) == 3
    # The key with another image: refused, as on /predict.
    reused = client.post(INFER, json=json_request(photo("coffee.jpg")), headers={"Idempotency-Key": "retry-1"})
    assert reused.status_code == 422 and error_of(reused)


def test_one_bad_image_among_several_queues_nothing(
    client: TestClient, service: TwopassService, cat_jpeg: bytes
) -> None:
    response = client.post(INFER, json=json_request(cat_jpeg, b"not an image at all", cat_jpeg))
    assert response.status_code == 400 and error_of(response).startswith("image 1")
    assert queued(service.settings) == 0


def _tensor(**changes: Any) -> dict[str, Any]:
    tensor = {"name": "image", "shape": [1], "datatype": "BYTES", "data": [b64(b"\xff\xd8\xff")]}
    return {"inputs": [{**tensor, **changes}]}


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("not JSON", b"{inputs", 400, "JSON"),
    ("no inputs", {"outputs": []}, 400, "inputs"),
    ("two inputs", {"inputs": [_tensor()["inputs"][0]] * 2}, 400, "inputs"),
    ("wrong input name", _tensor(name="INPUT__0"), 400, "'image'"),
    ("wrong datatype", _tensor(datatype="FP32", data=[0.5]), 400, "BYTES"),
    ("shape mismatch", _tensor(shape=[2]), 400, "shape"),
    ("negative shape", _tensor(shape=[-1]), 400, "negative"),
    # int64 arithmetic raised on the first (a 500) and wrapped the second's product to 1 (accepted).
    ("dimension over int64", _tensor(shape=[2**64 + 1]), 400, "over 9223372036854775807"),
    ("product over int64", _tensor(shape=[2**63 + 1, 2**63 + 1]), 400, "over 9223372036854775807"),
    ("product wraps in int64", _tensor(shape=[2**32, 2**32]), 400, "18446744073709551616 elements"),
    # Two valid int64 dimensions whose product is 1 modulo 2**64: np.prod said 1 element.
    (
        "product wraps to one",
        _tensor(shape=[1202937966811756183, 5987454018051221799]),
        400,
        "7202535762853416854285193740042633217 elements",
    ),
    ("negative pair", _tensor(shape=[-1, -1]), 400, "negative"),
    ("fractional dimension", _tensor(shape=[1.5]), 400, "shape"),
    ("too many dimensions", _tensor(shape=[1] * 33), 400, "at most 32"),
    ("not base64", _tensor(data=["%%%"]), 400, "base64"),
    ("number as BYTES", _tensor(data=[7]), 400, "base64 strings"),
    ("no data", _tensor(data=None), 400, "no data"),
    ("not an image", _tensor(data=[b64(b"hello")]), 400, "image"),
    ("empty image", _tensor(data=[""]), 400, "empty"),
    ("too many images", _tensor(shape=[17], data=[b64(b"x")] * 17), 400, "1 to 16"),
    ("unknown output", {**_tensor(), "outputs": [{"name": "logits"}]}, 400, "'probabilities'"),
    ("classification not a number", {**_tensor(), "parameters": {"classification": "3"}}, 400, "classification"),
    (
        "binary_data not a flag",
        {**_tensor(), "outputs": [{"name": "probabilities", "parameters": {"binary_data": 1}}]},
        400,
        "binary_data",
    ),
    ("twopass_slow a number", {**_tensor(), "parameters": {"twopass_slow": 0}}, 400, "twopass_slow"),
    ("twopass_slow no mode", {**_tensor(), "parameters": {"twopass_slow": "no"}}, 400, "auto, always, never"),
]


@pytest.mark.parametrize(("payload", "status", "says"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_are_4xx_in_the_protocols_shape(
    client: TestClient, service: TwopassService, payload: Any, status: int, says: str
) -> None:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = client.post(INFER, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status and says in error_of(response)
    assert queued(service.settings) == 0


@pytest.mark.parametrize(
    ("shape", "count"),
    [([1], 1), ([16, 1], 16), ([0, 2**63 - 1], 0), ([2**63 - 1, 2**63 - 1], (2**63 - 1) ** 2), ([], 1)],
)
def test_element_count_is_exact(shape: list[int], count: int) -> None:
    assert oip.element_count(shape) == count


@pytest.mark.parametrize("shape", [[2**63], [-1], [1, -(2**63)], [True], [1] * 33])
def test_element_count_refuses_what_no_int64_shape_holds(shape: list[int]) -> None:
    with pytest.raises(HTTPProblemError) as caught:
        oip.element_count(shape)
    assert caught.value.status == 400


def test_probe_refuses_a_side_over_the_limit_from_the_header() -> None:
    out = io.BytesIO()
    Image.new("RGB", (1, MAX_SIDE + 1)).save(out, format="PNG")
    with pytest.raises(ImageTooLargeError, match="side"):
        oip.probe(3, out.getvalue(), max_pixels=40_000_000)


def test_bad_binary_framing(client: TestClient, cat_jpeg: bytes) -> None:
    body, headers = binary_request(cat_jpeg)
    for broken, hdrs, says in (
        (body, {"Inference-Header-Content-Length": "abc"}, "Inference-Header-Content-Length"),
        # str.isdigit() takes a superscript two, which int() then refuses: this was a 500.
        (body, {"Inference-Header-Content-Length": b"\xb2"}, "Inference-Header-Content-Length"),
        (body, {"Inference-Header-Content-Length": "9" * 5000}, "Inference-Header-Content-Length"),
        (body, {"Inference-Header-Content-Length": str(len(body) + 1)}, "Inference-Header-Content-Length"),
        (body[:-1], headers, "binary_data_size"),
        (body + b"\0", headers, "binary_data_size"),
    ):
        response = client.post(INFER, content=broken, headers=hdrs)
        assert response.status_code == 400 and says in error_of(response), response.text
    # The lengths inside the tensor must add up to binary_data_size too.
    head = json.dumps(
        {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}
    ).encode()
    short = client.post(
        INFER, content=head + struct.pack("<I", 99) + b"ab", headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert short.status_code == 400 and "runs past the end" in error_of(short)


def test_size_limits(aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes) -> None:
    settings = aws.replace(max_image_bytes=len(cat_jpeg) - 1)
    service = TwopassService(
        settings, DynamoJobStore(settings.table_name), SqsPublisher(settings.queue_url), fast_classifier
    )
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        body, headers = binary_request(cat_jpeg)
        too_big = c.post(INFER, content=body, headers=headers)
        assert too_big.status_code == 413 and "limit" in error_of(too_big)
        huge = c.post(INFER, content=b"{" + b" " * (4 * len(cat_jpeg)) + b"}")
        assert huge.status_code == 413 and error_of(huge)
        bomb = gzip.compress(b" " * (4 * len(cat_jpeg)))
        inflated = c.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
        assert inflated.status_code == 413 and "decompresses" in error_of(inflated)


def test_wrong_method_is_405_in_the_protocols_shape(client: TestClient) -> None:
    response = client.get(INFER)
    assert response.status_code == 405 and response.headers["Allow"] == "POST" and error_of(response)


def test_unavailable_queue_is_503_with_retry_after(aws: Settings, fast_classifier: Classifier, cat_jpeg: bytes) -> None:
    missing = aws.queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    service = TwopassService(aws, DynamoJobStore(aws.table_name), SqsPublisher(missing), fast_classifier)
    with TestClient(create_app(service), raise_server_exceptions=False) as c:
        response = c.post(INFER, json=json_request(cat_jpeg))
        assert response.status_code == 503 and response.headers["Retry-After"] and error_of(response)
        # The fast model alone needs no queue.
        assert c.post(INFER, json=json_request(cat_jpeg, parameters={"twopass_slow": False})).status_code == 200


def test_routes_are_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{model_name}",
        "/v2/models/{model_name}/ready",
        "/v2/models/{model_name}/infer",
    } <= set(paths)
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])


def test_binary_infer_through_the_lambda_handler(aws: Settings, cat_jpeg: bytes, photo: Photo) -> None:
    """Behind API Gateway: the binary body arrives base64-encoded, the binary answer leaves base64-encoded
    with its Inference-Header-Content-Length, and the job's owner is the gateway's API key id."""
    spec = importlib.util.spec_from_file_location("api_handler_oip", REPO_ROOT / "functions/api/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    body, headers = binary_request(cat_jpeg, photo("coffee.jpg"), parameters={"binary_data_output": True})
    event: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / "rest_predict_binary.json").read_text()))
    event.update(resource=INFER, path=INFER, body=base64.b64encode(body).decode(), isBase64Encoded=True)
    event["requestContext"].update(resourcePath=INFER, path=f"/dev{INFER}")
    for name, value in {
        **headers,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(body)),
    }.items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    response = module.handler(event, LambdaContext())
    assert response["statusCode"] == 200 and response["isBase64Encoded"] is True, response
    raw = base64.b64decode(response["body"])
    size = int(response["headers"]["inference-header-content-length"])
    head = json.loads(raw[:size])
    probabilities = np.frombuffer(raw[size:], dtype="<f4").reshape(2, 1000)
    assert imagenet_labels()[int(probabilities[1].argmax())] == "espresso"
    job_id = head["parameters"]["twopass_job_id"].split(",")[0]
    record = DynamoJobStore(aws.table_name).get(job_id)
    assert record is not None and record.owner == "apikey:k1a2b3"
