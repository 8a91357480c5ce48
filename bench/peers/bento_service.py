"""BentoML peer: the same fast ONNX model and the same preprocessing behind a sync endpoint.

Served by ``bentoml serve bench.peers.bento_service:FastModel`` from the separate ``.venv-bench-bento``
(BentoML's dependencies, OpenTelemetry's SDK among them, must not leak into the venv the twopass
measurements run in). One worker, two threads: the same parallelism as twopass's inference pool.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import bentoml
import numpy as np
import onnxruntime as ort

from twopass.config import Settings
from twopass.imaging import load_tensor
from twopass.models.card import ModelCard, card_path
from twopass.models.labels import imagenet_labels

THREADS = int(os.environ.get("BENCH_PEER_THREADS", "2"))


@bentoml.service(
    workers=1,
    threads=THREADS,
    traffic={"timeout": 120},
    logging={"access": {"enabled": False}},
)
class FastModel:
    def __init__(self) -> None:
        path = Path(Settings().fast_model)
        self.card = ModelCard.load(card_path(path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(os.environ.get("BENCH_PEER_INTRA_OP", "0"))
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.labels = imagenet_labels()

    @bentoml.api
    def predict(self, image_data: str) -> dict[str, Any]:
        data = base64.b64decode(image_data)
        x = load_tensor(data, self.card.preprocessing, max_pixels=40_000_000)[None]
        (logits,) = self.session.run(None, {self.card.input_name: x})
        probs = np.exp(logits[0] - logits[0].max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:5]
        return {
            "label": self.labels[int(top[0])],
            "top_k": [{"label": self.labels[int(i)], "probability": float(probs[i])} for i in top],
        }
