"""ONNX classifier: one onnxruntime session, the card's preprocessing, softmax and top-k labels."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from twopass.exceptions import ModelLoadError, ProviderUnavailableError
from twopass.imaging import load_tensor
from twopass.models import cuda
from twopass.models.card import ModelCard
from twopass.models.pack import ModelPack, check_session, check_width, load_pack, not_onnx, one_line
from twopass.models.source import resolve

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    class_ids: tuple[int, ...]
    #: Every class's probability in class-index order (float32), for callers that need more than the
    #: top-k (the Open Inference Protocol's output tensor); never stored or sent to the queue.
    distribution: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: A sigmoid (multi-label) model's classes at or over the card's threshold, best first; else ``None``.
    over_threshold: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def top_k(self) -> list[dict[str, object]]:
        return [
            {"label": lab, "probability": round(p, 6), "class_id": cid}
            for lab, p, cid in zip(self.labels, self.probabilities, self.class_ids, strict=True)
        ]

    def result(
        self,
        model: str,
        inference_ms: float,
        *,
        batch_size: int | None = None,
        queue_wait_ms: float | None = None,
    ) -> dict[str, Any]:
        """The result shape both the API (fast) and the worker (slow) store and return.

        ``{"model", "label", "top_k", "inference_ms"}`` plus the batch figures when the worker has them.
        """
        out: dict[str, Any] = {
            "model": model,
            "label": self.label,
            "top_k": self.top_k(),
            "inference_ms": round(inference_ms, 3),
        }
        if self.over_threshold is not None:
            out["labels"] = list(self.over_threshold)
        if batch_size is not None:
            out["batch_size"] = batch_size
        if queue_wait_ms is not None:
            out["queue_wait_ms"] = round(queue_wait_ms, 1)
        return out


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = intra_op_threads
    # Sequential graph execution: these CNNs are a chain, parallel execution only adds overhead.
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return opts


#: CUDA execution provider options. The worker's batches vary in size (1…max_batch_size), so:
CUDA_PROVIDER_OPTIONS: dict[str, str] = {
    # EXHAUSTIVE (the default) benchmarks every cuDNN algorithm again for each new input shape,
    # stalling the first batch of every size for up to seconds; the heuristic pick is close.
    "cudnn_conv_algo_search": "HEURISTIC",
    # Grow the memory arena by what a run needs, not to the next power of two: a batch of 32 must
    # not reserve twice its activations for the life of the process.
    "arena_extend_strategy": "kSameAsRequested",
    # Host↔device copies on the compute stream: no cross-stream synchronisation per run.
    "do_copy_in_default_stream": "1",
    # Let cuDNN use the workspace the fastest algorithms need (depthwise/pointwise convs).
    "cudnn_conv_use_max_workspace": "1",
}


CPU = "CPUExecutionProvider"
#: A provider name ending in this may be missing (``cuda?``): the session falls back to the next one.
OPTIONAL = "?"


def provider_names(preferred: Sequence[str]) -> list[str]:
    """``preferred`` without the optional marks (``CUDAExecutionProvider?`` → ``CUDAExecutionProvider``)."""
    return [p.removesuffix(OPTIONAL) for p in preferred]


def required_providers(preferred: Sequence[str]) -> list[str]:
    """The providers a session must get: every one asked for without the optional mark, CPU aside."""
    return [p for p in preferred if not p.endswith(OPTIONAL) and p != CPU]


def available_providers(preferred: Sequence[str]) -> list[str]:
    """``preferred`` filtered to the providers this onnxruntime build actually has, CPU last.

    A build can list a provider it cannot start (CUDA without its libraries or a driver): the
    session then falls back, and :class:`Classifier` checks what it really got.
    """
    have = set(ort.get_available_providers())
    chosen = [p for p in provider_names(preferred) if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_options(providers: Sequence[str]) -> list[dict[str, str]]:
    """The options ``onnxruntime.InferenceSession`` takes beside ``providers``, one dict each."""
    return [dict(CUDA_PROVIDER_OPTIONS) if p == "CUDAExecutionProvider" else {} for p in providers]


class Classifier:
    """An ImageNet classifier loaded from an ``.onnx`` file and its model card.

    ``providers`` in order of preference; one named without the optional mark (``CUDAExecutionProvider``,
    not ``CUDAExecutionProvider?``) is required: a session without it raises
    :class:`~twopass.exceptions.ProviderUnavailableError` naming what is missing, unless
    ``allow_fallback`` lets it serve on what it got.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        top_k: int = 5,
        allow_fallback: bool = False,
    ) -> None:
        self.path = path
        #: The provider asked for first: what the model should serve on.
        self.requested_provider = (provider_names(providers) or [CPU])[0]
        #: The validated pack: card, files and class names (``path`` is an ``.onnx`` or a pack directory).
        self.pack: ModelPack = load_pack(path)
        self.card: ModelCard = self.pack.card
        started = time.perf_counter()
        if cuda.CUDA in provider_names(providers):
            cuda.preload()  # the nvidia-* wheels' libraries, where installed (the gpu-slim image)
        try:
            chosen = available_providers(providers)
            self.session = ort.InferenceSession(
                str(self.pack.model_file),
                sess_options=session_options(intra_op_threads),
                providers=chosen,
                provider_options=provider_options(chosen),
            )
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise not_onnx(self.pack.model_file, exc) from exc
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self._check_providers(providers, allow_fallback)
        self.labels = self.pack.labels
        self.top_k = top_k
        self._input = self.card.input_name
        self._output = self.card.output_name
        check_session(self.pack, self.session)
        # The first run allocates buffers and picks kernels (~10x a normal run): pay it at load time
        # (Lambda init, worker start), not on the first request. It also proves the shapes fit.
        try:
            warm = self.logits(np.zeros(self.card.preprocessing.input_shape(), dtype=np.float32))
        except Exception as exc:  # onnxruntime's own types: a shape the graph refuses
            raise ModelLoadError(
                f"{self.pack.card_file}: the model refused a {self.card.preprocessing.describe()} input "
                f"({one_line(str(exc))[:300]}); fix 'preprocessing' to what the model takes"
            ) from exc
        check_width(self.pack, warm.shape[-1] if warm.ndim == 2 else -1)
        self.load_seconds = time.perf_counter() - started
        logger.info("loaded %s (%s) on %s in %.3fs", self.name, path.name, self.providers[0], self.load_seconds)

    def _check_providers(self, asked: Sequence[str], allow_fallback: bool) -> None:
        missing = [p for p in required_providers(asked) if p not in self.providers]
        if missing and not allow_fallback:
            raise ProviderUnavailableError(cuda.why_unavailable(missing[0], self.providers[0]))
        if self.providers[0] != self.requested_provider:
            # Loud when the provider was required and only allow_fallback let it through; an optional
            # one (``cuda?``) missing is what its mark asked for.
            level = logging.WARNING if missing else logging.INFO
            logger.log(
                level, "%s serves on %s, not on %s as asked", self.path.name, self.providers[0], self.requested_provider
            )

    @property
    def serving_as_asked(self) -> bool:
        return self.providers[0] == self.requested_provider

    @classmethod
    def from_location(
        cls,
        location: str,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        top_k: int = 5,
        allow_fallback: bool = False,
    ) -> Classifier:
        """Load from a local path or any registered scheme (``s3://…``)."""
        return cls(
            resolve(location),
            providers=providers,
            intra_op_threads=intra_op_threads,
            top_k=top_k,
            allow_fallback=allow_fallback,
        )

    @property
    def name(self) -> str:
        return self.card.name

    def tensor(self, data: bytes, *, max_pixels: int) -> np.ndarray:
        """Encoded image bytes → this model's ``(3, S, S)`` (or ``(S, S, 3)``) input."""
        return load_tensor(data, self.card.preprocessing, max_pixels=max_pixels)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch in the card's layout; returns ``(N, classes)`` scores."""
        (out,) = self.session.run([self._output], {self._input: batch})
        return np.asarray(out, dtype=np.float32)

    def predict_batch(self, tensors: Sequence[np.ndarray] | np.ndarray) -> list[Prediction]:
        """Classify a batch of preprocessed inputs in one ``session.run``."""
        batch = tensors if isinstance(tensors, np.ndarray) else np.stack(tensors)
        return self.decode(self.logits(batch))

    def predict(self, tensor: np.ndarray) -> Prediction:
        return self.predict_batch(tensor[None, ...])[0]

    def decode(self, logits: np.ndarray) -> list[Prediction]:
        """Probabilities as the card's ``output`` says (softmax, as they are, sigmoid), then top-k."""
        probs = self.probabilities(logits)
        sigmoid = self.card.output == "sigmoid"
        k = min(self.top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1)[:, :k]
        return [
            Prediction(
                labels=tuple(self.labels[i] for i in row),
                probabilities=tuple(float(probs[n, i]) for i in row),
                class_ids=tuple(int(i) for i in row),
                distribution=probs[n],
                over_threshold=(
                    tuple(self.labels[i] for i in np.argsort(-probs[n]) if probs[n, i] >= self.card.threshold)
                    if sigmoid
                    else None
                ),
            )
            for n, row in enumerate(top)
        ]

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """``(N, classes)`` model output → probabilities: softmax of logits, sigmoid per class, or as they are."""
        if self.card.output == "probabilities":
            return np.asarray(scores, dtype=np.float32)
        if self.card.output == "sigmoid":
            return np.asarray(1.0 / (1.0 + np.exp(-scores)), dtype=np.float32)
        shifted = scores - scores.max(axis=1, keepdims=True)
        probs: np.ndarray = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        return probs
