"""The Open Inference Protocol (KServe v2, as Triton speaks it over HTTP): messages and tensors.

What the protocol needs beyond twopass's own API, independent of the routes: the request and
response models, reading a ``BYTES`` input of encoded images from JSON (base64 strings) or from the
binary tensor data extension (``Inference-Header-Content-Length`` + ``binary_data_size``), and
writing the ``probabilities`` output as a tensor or, under Triton's classification extension, as
``"<score>:<index>:<label>"`` strings, in JSON or binary (``binary_data`` / ``binary_data_output``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import struct
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from twopass.api.body import parse_json
from twopass.api.errors import HTTPProblemError
from twopass.cascade import SlowMode, parse_mode
from twopass.exceptions import ImageTooLargeError, InvalidImageError, InvalidRequestError
from twopass.imaging import ALLOWED_FORMATS, MAX_SIDE

#: The one input both models take: encoded image files (JPEG, PNG, WebP, GIF, BMP, TIFF), one per element.
INPUT_NAME = "image"
#: The one output: softmax probabilities over the ImageNet classes, one row per image.
OUTPUT_NAME = "probabilities"
PLATFORM = "onnxruntime_onnx"
#: Triton's names for the protocol extensions served here.
EXTENSIONS = ("classification", "binary_tensor_data")
#: Images per infer call: each is one fast inference and one slow job, all inside one API deadline.
MAX_IMAGES = 16

#: Request parameters twopass reads (others, e.g. tritonclient's ``priority``, are accepted and ignored).
SLOW_PARAMETER = "twopass_slow"
JOB_ID_PARAMETER = "twopass_job_id"

_LENGTH = struct.Struct("<I")
#: Most dimensions an input's shape may have (images come as [N] or [N, 1]; numpy's own limit is 64).
MAX_RANK = 32
#: The largest dimension: shapes are int64 in the protocol.
MAX_DIMENSION = 2**63 - 1
#: Inference-Header-Content-Length: ASCII digits only (``str.isdigit`` also takes "²", which ``int`` refuses).
_HEADER_LENGTH = re.compile(r"[0-9]{1,15}")


# ---------------------------------------------------------------- messages (also the OpenAPI schema)


class OipError(BaseModel):
    """The protocol's error body, on every ``/v2`` route."""

    error: str = Field(description="What went wrong, in words.")


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks the batch dimension: one row per image.")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestInput(BaseModel):
    name: str = Field(description=f'"{INPUT_NAME}"')
    shape: list[int] = Field(description="Any shape whose elements are the images, e.g. [N] or [N, 1].")
    datatype: str = Field(description='"BYTES"')
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: the input's bytes after the JSON (binary tensor data extension)."
    )
    data: Any = Field(default=None, description="The images as base64 strings, row-major (flat or nested).")


class RequestOutput(BaseModel):
    name: str = Field(description=f'"{OUTPUT_NAME}"')
    parameters: dict[str, Any] | None = Field(
        default=None, description="classification: k (top-k strings instead of the tensor); binary_data: bool."
    )


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: one ``BYTES`` input of encoded images."""

    id: str | None = Field(default=None, description="Echoed in the response.")
    parameters: dict[str, Any] | None = Field(
        default=None,
        description=f"{SLOW_PARAMETER}: false (or never) answers with the fast model only, no slow job; true (the "
        "default, or auto) and always as /predict's slow field. classification: k and binary_data_output: bool "
        "apply to every output when outputs is absent.",
    )
    inputs: list[RequestInput] = Field(min_length=1, max_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    datatype: Literal["FP32", "BYTES"]
    shape: list[int]
    parameters: dict[str, int] | None = Field(default=None, description="binary_data_size when sent as binary.")
    data: list[float] | list[str] | None = Field(default=None, description="Row-major values, when sent as JSON.")


class InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, str] | None = Field(
        default=None,
        description=f"{JOB_ID_PARAMETER}: the slow job of each image (comma-separated, in input order; empty for "
        "an image that got no job); read each at GET /job/{id}.",
    )
    outputs: list[ResponseOutput]


INFER_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": InferRequest.model_json_schema()},
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "Binary tensor data extension: the JSON request (Inference-Header-Content-Length "
            "bytes), then each binary input's bytes.",
        },
    },
}


def model_metadata(card: dict[str, Any], classes: int) -> ModelMetadata:
    return ModelMetadata(
        name=str(card["name"]),
        versions=[str(card["version"])],
        platform=PLATFORM,
        inputs=[TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, classes])],
    )


# ---------------------------------------------------------------- reading a request


@dataclass(frozen=True)
class OutputSpec:
    """One requested output: the tensor (``classification == 0``) or its top-k strings; JSON or binary."""

    classification: int = 0
    binary: bool = False


@dataclass(frozen=True)
class InferCall:
    """A parsed infer request."""

    images: list[bytes]
    outputs: list[OutputSpec]
    #: What to ask of the slow model for each image (``parameters.twopass_slow``), as ``/predict``'s ``slow``.
    slow: SlowMode = SlowMode.AUTO
    request_id: str | None = None


def bad_request(detail: str) -> HTTPProblemError:
    return HTTPProblemError(400, "invalid_request", detail)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A ``Content-Encoding: gzip|deflate`` body (tritonclient's request compression), at most ``limit`` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise HTTPProblemError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r}: send gzip, deflate or none"
        )
    # wbits 31: a gzip member; 15: a zlib stream (what HTTP's "deflate" means).
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequestError("invalid_encoding", f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise ImageTooLargeError(f"the body decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise InvalidRequestError("invalid_encoding", f"the {encoding} body is truncated")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON, binary tensor data): the binary tensor data extension puts the JSON first."""
    if header_length is None:
        return body, b""
    length = header_length.strip()
    if not _HEADER_LENGTH.fullmatch(length) or not 0 < int(length) <= len(body):
        raise bad_request(
            f"Inference-Header-Content-Length {header_length!r} must be a byte count within the body "
            f"({len(body)} bytes)"
        )
    return body[: int(length)], body[int(length) :]


def parse_infer(json_part: bytes, binary: bytes, max_image_bytes: int) -> InferCall:
    """The images and the outputs asked for; a 4xx for anything the protocol or twopass refuses."""
    if not json_part:
        raise InvalidRequestError("empty_body", 'the body is empty: send {"inputs": [...]} (an inference request)')
    payload = parse_json(json_part)
    try:
        request = InferRequest.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise bad_request(f"not an inference request: {problems}") from None
    parameters = request.parameters or {}
    (tensor,) = request.inputs
    images = _images(tensor, binary, max_image_bytes)
    classification = _count(parameters, "classification", "parameters")
    binary_output = _flag(parameters, "binary_data_output", "parameters", default=False)
    if request.outputs is None:
        outputs = [OutputSpec(classification, binary_output)]
    else:
        outputs = [_output(o, classification, binary_output) for o in request.outputs]
        if len(outputs) != 1:
            raise bad_request(f"one output may be requested ({OUTPUT_NAME!r}); got {len(outputs)}")
    return InferCall(images, outputs, slow=_slow_mode(parameters.get(SLOW_PARAMETER)), request_id=request.id)


def _slow_mode(value: Any) -> SlowMode:
    """``twopass_slow``: true/false as the protocol's clients send flags, or /predict's own mode names."""
    if value is None or value is True:
        return SlowMode.AUTO
    if value is False:
        return SlowMode.NEVER
    if isinstance(value, str):
        return parse_mode(value)
    raise bad_request(f"parameters.{SLOW_PARAMETER} must be true, false, auto, always or never, not {value!r}")


def _output(output: RequestOutput, classification: int, binary: bool) -> OutputSpec:
    if output.name != OUTPUT_NAME:
        raise bad_request(f"unknown output {output.name!r}: the model's output is {OUTPUT_NAME!r}")
    parameters = output.parameters or {}
    where = f"outputs[{OUTPUT_NAME}].parameters"
    return OutputSpec(
        classification=_count(parameters, "classification", where, default=classification),
        binary=_flag(parameters, "binary_data", where, default=binary),
    )


def _count(parameters: dict[str, Any], name: str, where: str, default: int = 0) -> int:
    value = parameters.get(name, default)
    if type(value) is not int or value < 0:
        raise bad_request(f"{where}.{name} must be a whole number >= 0, not {value!r}")
    return value


def _flag(parameters: dict[str, Any], name: str, where: str, *, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise bad_request(f"{where}.{name} must be true or false, not {value!r}")
    return value


def _images(tensor: RequestInput, binary: bytes, max_image_bytes: int) -> list[bytes]:
    if tensor.name != INPUT_NAME:
        raise bad_request(f"unknown input {tensor.name!r}: the model's input is {INPUT_NAME!r} (BYTES, encoded images)")
    if tensor.datatype != "BYTES":
        raise bad_request(
            f"input {INPUT_NAME!r} is BYTES (encoded image files), not {tensor.datatype}: "
            "twopass decodes and preprocesses the images itself"
        )
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise bad_request(f"binary_data_size must be a whole number >= 0, not {size!r}")
        if tensor.data is not None:
            raise bad_request(f"input {INPUT_NAME!r} has both data and binary_data_size: send one")
        if size != len(binary):
            raise bad_request(f"binary_data_size is {size} but {len(binary)} bytes follow the JSON")
        images = list(_bytes_elements(binary))
    else:
        if binary:
            raise bad_request(f"{len(binary)} bytes follow the JSON but no input has binary_data_size")
        if tensor.data is None:
            raise bad_request(f"input {INPUT_NAME!r} has no data (nor binary_data_size)")
        images = [_from_base64(i, text, max_image_bytes) for i, text in enumerate(_flatten(tensor.data))]
    count = element_count(tensor.shape)
    if count != len(images):
        raise bad_request(
            f"input {INPUT_NAME!r} has shape {_shape_text(tensor.shape)} ({count} elements) but {len(images)} images"
        )
    if not 1 <= len(images) <= MAX_IMAGES:
        raise bad_request(f"send 1 to {MAX_IMAGES} images per request, not {len(images)}")
    for i, image in enumerate(images):
        if not image:
            raise InvalidRequestError("empty_image", f"image {i} is empty")
        if len(image) > max_image_bytes:
            raise ImageTooLargeError(f"image {i} is {len(image)} bytes; the limit is {max_image_bytes} bytes")
    return images


def element_count(shape: Sequence[int]) -> int:
    """How many elements a tensor of ``shape`` holds, exactly; a 400 for a shape no tensor can have.

    Python integers: a product never wraps (``np.prod`` in int64 took ``[2**63+1, 2**63+1]`` for 1
    element and raised on ``[2**64+1]``). Each dimension must be a whole number from 0 to 2**63 - 1
    (the protocol's int64), and a shape has at most :data:`MAX_RANK` of them.
    """
    if len(shape) > MAX_RANK:
        raise bad_request(f"input {INPUT_NAME!r} has {len(shape)} dimensions; at most {MAX_RANK} are allowed")
    for dimension in shape:
        if type(dimension) is not int:
            raise bad_request(f"input {INPUT_NAME!r} has shape {_shape_text(shape)}: dimensions are whole numbers")
        if dimension < 0:
            raise bad_request(f"input {INPUT_NAME!r} has a negative dimension in its shape {_shape_text(shape)}")
        if dimension > MAX_DIMENSION:
            raise bad_request(
                f"input {INPUT_NAME!r} has shape {_shape_text(shape)}: a dimension is over {MAX_DIMENSION} "
                "(shapes are int64)"
            )
    return math.prod(shape)


def _shape_text(shape: Sequence[int]) -> str:
    """The shape for an error message, cut short: a client's typo should not echo megabytes back."""
    text = str(list(shape))
    return text if len(text) <= 200 else text[:200] + "…]"


def _bytes_elements(data: bytes) -> Iterator[bytes]:
    """A binary BYTES tensor: each element is its length (uint32, little-endian) then its bytes."""
    offset = 0
    while offset < len(data):
        if offset + _LENGTH.size > len(data):
            raise bad_request(f"binary data of {INPUT_NAME!r} ends inside an element's 4-byte length")
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > len(data):
            raise bad_request(f"binary data of {INPUT_NAME!r}: an element of {length} bytes runs past the end")
        yield data[offset : offset + length]
        offset += length


def _flatten(data: Any) -> Iterator[Any]:
    """Row-major elements of JSON tensor data, flat or nested (nesting is bounded by the JSON parser)."""
    if isinstance(data, list):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _from_base64(index: int, text: Any, limit: int) -> bytes:
    if not isinstance(text, str):
        raise bad_request(f"image {index}: BYTES data in JSON are base64 strings, not {type(text).__name__}")
    text = text.strip()
    if text.startswith("data:") and "," in text[:100]:  # a data: URL, as browsers make them
        text = text.split(",", 1)[1]
    if len(text) > limit * 4 // 3 + 4:
        raise ImageTooLargeError(f"image {index} decodes to more than {limit} bytes")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequestError("invalid_base64", f"image {index} is not valid base64: {exc}") from None


def probe(index: int, data: bytes, max_pixels: int) -> None:
    """Refuse what is plainly not a usable image from its header alone (format, pixel count, sides).

    A call with several images checks them all this way before queueing any job, so a bad one
    among them rarely leaves the others' jobs behind; decoding still has the final word.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS)) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLargeError(f"image {index} looks like a decompression bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise InvalidImageError(
            f"image {index} is not an image in a supported format (JPEG, PNG, WebP, GIF, BMP, TIFF)"
        ) from None
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image {index} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(f"image {index} is {width}x{height}; no side may be over {MAX_SIDE} pixels")


# ---------------------------------------------------------------- writing the response


def classification(distribution: np.ndarray, k: int, labels: Sequence[str]) -> list[str]:
    """Triton's classification extension: the top ``k`` as ``"<score>:<index>:<label>"``, best first."""
    top = np.argsort(-distribution, kind="stable")[:k]
    return [f"{float(distribution[i]):f}:{int(i)}:{labels[int(i)]}" for i in top]


def serialize_bytes(elements: Sequence[str]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in (s.encode() for s in elements))


@dataclass(frozen=True)
class Encoded:
    """The response body: JSON alone, or JSON then binary outputs (with the JSON's length in a header)."""

    body: bytes
    media_type: str
    header_length: int | None = None


def encode_response(
    call: InferCall,
    distributions: np.ndarray,
    labels: Sequence[str],
    *,
    model_name: str,
    model_version: str,
    job_ids: Sequence[str] | None,
) -> Encoded:
    """The infer response for ``distributions`` (one row of class probabilities per image)."""
    rows, classes = distributions.shape
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for spec in call.outputs:
        output: dict[str, Any] = {"name": OUTPUT_NAME}
        if spec.classification:
            k = min(spec.classification, classes)
            strings = [s for row in distributions for s in classification(row, k, labels)]
            output.update(datatype="BYTES", shape=[rows, k])
            raw, values = (serialize_bytes(strings) if spec.binary else b""), strings
        else:
            output.update(datatype="FP32", shape=[rows, classes])
            flat = distributions.astype("<f4").reshape(-1)
            raw, values = (flat.tobytes() if spec.binary else b""), flat.tolist()
        if spec.binary:
            output["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            output["data"] = values
        outputs.append(output)
    response: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if call.request_id is not None:
        response["id"] = call.request_id
    if job_ids is not None:
        response["parameters"] = {JOB_ID_PARAMETER: ",".join(job_ids)}
    response["outputs"] = outputs
    head = json.dumps(response, separators=(",", ":")).encode()
    if not chunks:
        return Encoded(head, "application/json")
    return Encoded(head + b"".join(chunks), "application/octet-stream", header_length=len(head))
