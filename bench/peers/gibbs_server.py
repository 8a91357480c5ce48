"""gibbs peer (``uvicorn --factory bench.peers.gibbs_server:create_app``): a gibbs Hub in a FastAPI app,
gibbs Workers (processes) each holding the fast model, as in gibbs' FastAPI example.

gibbs 0.2.0 pins ``pyzmq<24``, which has no Python 3.12 wheel and whose sdist no longer compiles
against 3.12; ``bench/run.py`` installs gibbs with ``--no-deps`` next to a current pyzmq, which
its plain ROUTER/DEALER code works with.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from fastapi import FastAPI
from pydantic import BaseModel

PORT = int(os.environ.get("BENCH_GIBBS_PORT", "5019"))
WORKERS = int(os.environ.get("BENCH_PEER_THREADS", "2"))
SAMPLE = Path(__file__).resolve().parents[2] / "layers/twopass/twopass/data/cat.jpg"


class FastModel:
    """What each gibbs Worker process runs: the fast ONNX model with twopass's preprocessing."""

    def __init__(self) -> None:
        import onnxruntime as ort

        from twopass.config import Settings
        from twopass.models.card import ModelCard, card_path
        from twopass.models.labels import imagenet_labels

        path = Path(Settings().fast_model)
        self.card = ModelCard.load(card_path(path))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = int(os.environ.get("BENCH_PEER_INTRA_OP", "0"))
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.labels = imagenet_labels()

    def __call__(self, data: bytes) -> dict[str, Any]:
        import numpy as np

        from twopass.imaging import load_tensor

        x = load_tensor(data, self.card.preprocessing, max_pixels=40_000_000)[None]
        (logits,) = self.session.run(None, {self.card.input_name: x})
        probs = np.exp(logits[0] - logits[0].max())
        probs /= probs.sum()
        top = np.argsort(-probs)[:5]
        return {
            "label": self.labels[int(top[0])],
            "top_k": [{"label": self.labels[int(i)], "probability": float(probs[i])} for i in top],
        }


class PredictRequest(BaseModel):
    image_data: str


def create_app() -> FastAPI:
    from gibbs import Hub, Worker

    workers: list[Any] = []
    hub = Hub(port=PORT)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for _ in range(WORKERS):
            worker = Worker(FastModel, gibbs_port=PORT)
            worker.start()
            workers.append(worker)
        yield
        for worker in workers:
            worker.terminate()

    app = FastAPI(lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, str]:
        # Ready only once a worker answered: the first request waits for the model otherwise.
        await hub.request(SAMPLE.read_bytes())
        return {"health": "ok"}

    @app.post("/predict")
    async def predict(body: PredictRequest) -> dict[str, Any]:
        result: dict[str, Any] = await hub.request(base64.b64decode(body.image_data))
        return result

    return app
