"""A bare FastAPI endpoint running the fast model inline (``uvicorn --factory bench.peers.bare_fastapi:create_app``).

What twopass's fast path costs beyond the model is measured against this: the same model, session
threads and preprocessing, the same JSON request, one ``async def`` that decodes, runs the session on
the event loop and answers the label and top 5. No job, no queue, no validation beyond pydantic's.
"""

from __future__ import annotations

import base64
import os
from typing import Any

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from fastapi import FastAPI
from pydantic import BaseModel

from bench.peers.gibbs_server import FastModel


class Body(BaseModel):
    image_data: str


def create_app() -> FastAPI:
    model = FastModel()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"health": "ok"}

    @app.post("/predict")
    async def predict(body: Body) -> dict[str, Any]:
        return model(base64.b64decode(body.image_data))

    return app
