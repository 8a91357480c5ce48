"""Triton's own client (``tritonclient[http]`` from PyPI) against the local stack, as `make run` starts it.

Teams that call their models with tritonclient point it at twopass and change nothing else: health,
metadata, ``infer`` with a BYTES input (binary tensor data and JSON, one image and several), Triton's
classification extension, and the slow job behind every answer completed by the real worker.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import CAT_LABELS
from twopass.local.stack import LocalStack
from twopass.models.labels import imagenet_labels

pytestmark = pytest.mark.e2e

FAST = "efficientnet-lite0"
SLOW = "efficientnet-lite2"


def key(stack: LocalStack) -> dict[str, str]:
    return {"x-api-key": stack.api_key or ""}


def address(stack: LocalStack) -> str:
    """tritonclient takes host:port (and an optional path), not a URL."""
    return stack.api_url.removeprefix("http://")


@pytest.fixture(scope="module")
def client(stack: LocalStack) -> Iterator[triton.InferenceServerClient]:
    c = triton.InferenceServerClient(url=address(stack), connection_timeout=30.0, network_timeout=60.0)
    yield c
    c.close()


def images_input(images: list[bytes], *, binary: bool = True) -> triton.InferInput:
    """The model's one input: encoded image files, raw in binary tensor data, base64 in JSON."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    values = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(values, dtype=np.object_), binary_data=binary)
    return tensor


def job_ids(result: triton.InferResult) -> list[str]:
    parameters: dict[str, Any] = result.get_response()["parameters"]
    return str(parameters["twopass_job_id"]).split(",")


def wait_for_jobs(stack: LocalStack, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=stack.api_url, headers=key(stack), timeout=30) as http:
        while len(done) < len(ids) and time.monotonic() < deadline:
            for job_id in ids:
                if job_id not in done:
                    body = http.get(f"/job/{job_id}").json()
                    if body["status"] in ("succeeded", "failed"):
                        done[job_id] = body
            time.sleep(0.2)
    assert len(done) == len(ids), f"unfinished after {timeout}s: {set(ids) - set(done)}"
    return [done[j] for j in ids]


def test_health_and_metadata(client: triton.InferenceServerClient, stack: LocalStack) -> None:
    # Liveness and readiness are open, like /health; everything else needs the key.
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(FAST, headers=key(stack))
    assert not client.is_model_ready(FAST)
    server = client.get_server_metadata(headers=key(stack))
    assert server["name"] == "twopass" and "classification" in server["extensions"]
    for name in (FAST, SLOW):
        metadata = client.get_model_metadata(name, headers=key(stack))
        assert metadata["name"] == name and metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
        version = metadata["versions"][0]
        assert client.get_model_metadata(name, model_version=version, headers=key(stack)) == metadata
    # The slow model is ready once the stack's worker has reported in.
    deadline = time.monotonic() + 60
    while not client.is_model_ready(SLOW, headers=key(stack)):
        assert time.monotonic() < deadline, "the slow model never became ready"
        time.sleep(0.5)
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_metadata(FAST)
    assert refused.value.status() == "403" and "x-api-key" in refused.value.message()


def test_infer_binary_with_classification_then_the_slow_result(
    client: triton.InferenceServerClient, stack: LocalStack, cat_jpeg: bytes
) -> None:
    result = client.infer(
        FAST,
        [images_input([cat_jpeg])],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=3)],
        request_id="cat-1",
        headers=key(stack),
    )
    assert result.get_response()["id"] == "cat-1"
    top = result.as_numpy("probabilities")
    assert top.shape == (1, 3)
    entries = [entry.decode().split(":", 2) for entry in top[0]]
    scores = [float(score) for score, _, _ in entries]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert all(imagenet_labels()[int(index)] == label for _, index, label in entries)
    assert entries[0][2] in CAT_LABELS
    (job_id,) = job_ids(result)
    (job,) = wait_for_jobs(stack, [job_id])
    assert job["status"] == "succeeded" and job["slow"]["model"] == SLOW
    assert job[job_id]["prediction"] in CAT_LABELS


def test_infer_json_several_images_probabilities(
    client: triton.InferenceServerClient, stack: LocalStack, cat_jpeg: bytes, photo: Any
) -> None:
    images = [cat_jpeg, photo("coffee.jpg"), photo("astronaut.jpg")]
    result = client.infer(
        FAST,
        [images_input(images, binary=False)],
        outputs=[triton.InferRequestedOutput("probabilities", binary_data=False)],
        headers=key(stack),
    )
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (3, 1000) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    labels = [imagenet_labels()[i] for i in probabilities.argmax(axis=1)]
    assert labels[0] in CAT_LABELS and labels[1] == "espresso"
    ids = job_ids(result)
    assert len(set(ids)) == 3
    slow = [job[job_id]["prediction"] for job, job_id in zip(wait_for_jobs(stack, ids), ids, strict=True)]
    assert slow[0] in CAT_LABELS and slow[1] == "espresso"


def test_infer_binary_several_images_default_outputs(
    client: triton.InferenceServerClient, stack: LocalStack, cat_jpeg: bytes, photo: Any
) -> None:
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = client.infer(FAST, [images_input([photo("coffee.jpg"), cat_jpeg])], headers=key(stack))
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 1000)
    assert imagenet_labels()[int(probabilities[0].argmax())] == "espresso"
    assert len(set(job_ids(result))) == 2


def test_fast_only_and_compressed_request(client: triton.InferenceServerClient, stack: LocalStack, photo: Any) -> None:
    result = client.infer(
        FAST,
        [images_input([photo("coffee.jpg")])],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=1)],
        parameters={"twopass_slow": False},
        request_compression_algorithm="gzip",
        headers=key(stack),
    )
    assert result.as_numpy("probabilities")[0][0].decode().endswith(":967:espresso")
    assert "parameters" not in result.get_response()


def test_errors_reach_the_client_as_its_exception(
    client: triton.InferenceServerClient, stack: LocalStack, cat_jpeg: bytes
) -> None:
    with pytest.raises(InferenceServerException) as slow:
        client.infer(SLOW, [images_input([cat_jpeg])], headers=key(stack))
    assert slow.value.status() == "400" and "/job/{id}" in slow.value.message()
    with pytest.raises(InferenceServerException) as bad:
        client.infer(FAST, [images_input([b"not an image"])], headers=key(stack))
    assert bad.value.status() == "400" and "image" in bad.value.message()
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet50", headers=key(stack))
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException) as anonymous:
        client.infer(FAST, [images_input([cat_jpeg])])
    assert anonymous.value.status() == "403"


async def _aio_round_trip(stack: LocalStack, image: bytes) -> tuple[bool, np.ndarray]:
    async with triton_aio.InferenceServerClient(url=address(stack)) as aio:
        live = await aio.is_server_live()
        tensor = triton_aio.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
        result = await aio.infer(FAST, [tensor], headers=key(stack))
        return live, result.as_numpy("probabilities")


def test_asyncio_client(stack: LocalStack, photo: Any) -> None:
    live, probabilities = asyncio.run(_aio_round_trip(stack, photo("coffee.jpg")))
    assert live and imagenet_labels()[int(probabilities[0].argmax())] == "espresso"
