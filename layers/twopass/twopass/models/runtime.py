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

from twopass.exceptions import ModelLoadError
from twopass.imaging import load_tensor
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels
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


def available_providers(preferred: Sequence[str]) -> list[str]:
    """``preferred`` filtered to the providers this onnxruntime build actually has, CPU last."""
    have = set(ort.get_available_providers())
    chosen = [p for p in preferred if p in have]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_options(providers: Sequence[str]) -> list[dict[str, str]]:
    """The options ``onnxruntime.InferenceSession`` takes beside ``providers``, one dict each."""
    return [dict(CUDA_PROVIDER_OPTIONS) if p == "CUDAExecutionProvider" else {} for p in providers]


class Classifier:
    """An ImageNet classifier loaded from an ``.onnx`` file and its model card."""

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        top_k: int = 5,
    ) -> None:
        self.path = path
        try:
            self.card = ModelCard.load(card_path(path))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ModelLoadError(f"bad or missing model card for {path}: {exc}") from exc
        started = time.perf_counter()
        try:
            chosen = available_providers(providers)
            self.session = ort.InferenceSession(
                str(path),
                sess_options=session_options(intra_op_threads),
                providers=chosen,
                provider_options=provider_options(chosen),
            )
        except Exception as exc:  # onnxruntime raises its own unexported exception types
            raise ModelLoadError(f"onnxruntime could not load {path}: {exc}") from exc
        self.providers = tuple(self.session.get_providers())
        self.labels = imagenet_labels()
        self.top_k = top_k
        self._input = self.card.input_name
        self._output = self.card.output_name
        # The first run allocates buffers and picks kernels (~10x a normal run): pay it at load time
        # (Lambda init, worker start), not on the first request.
        size = self.card.input_size
        self.logits(np.zeros((1, 3, size, size), dtype=np.float32))
        self.load_seconds = time.perf_counter() - started
        logger.info("loaded %s (%s) on %s in %.3fs", self.name, path.name, self.providers[0], self.load_seconds)

    @classmethod
    def from_location(
        cls,
        location: str,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        top_k: int = 5,
    ) -> Classifier:
        """Load from a local path or any registered scheme (``s3://…``)."""
        return cls(resolve(location), providers=providers, intra_op_threads=intra_op_threads, top_k=top_k)

    @property
    def name(self) -> str:
        return self.card.name

    def tensor(self, data: bytes, *, max_pixels: int) -> np.ndarray:
        """Encoded image bytes → this model's ``(3, S, S)`` input."""
        return load_tensor(data, self.card.preprocessing, max_pixels=max_pixels)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Run one ``(N, 3, S, S)`` batch; returns ``(N, 1000)`` logits."""
        (out,) = self.session.run([self._output], {self._input: batch})
        return np.asarray(out, dtype=np.float32)

    def predict_batch(self, tensors: Sequence[np.ndarray] | np.ndarray) -> list[Prediction]:
        """Classify a batch of preprocessed inputs in one ``session.run``."""
        batch = tensors if isinstance(tensors, np.ndarray) else np.stack(tensors)
        return self.decode(self.logits(batch))

    def predict(self, tensor: np.ndarray) -> Prediction:
        return self.predict_batch(tensor[None, ...])[0]

    def decode(self, logits: np.ndarray) -> list[Prediction]:
        """Softmax and top-k over ``(N, 1000)`` logits."""
        shifted = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(self.top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1)[:, :k]
        return [
            Prediction(
                labels=tuple(self.labels[i] for i in row),
                probabilities=tuple(float(probs[n, i]) for i in row),
                class_ids=tuple(int(i) for i in row),
                distribution=probs[n],
            )
            for n, row in enumerate(top)
        ]
