"""The API Lambda's init (``twopass.api.coldstart``): deferred pydantic builds and the fast model
loading on its own thread, each checked for what it changes and for what it must not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from twopass.api.coldstart import deferred_model_builds
from twopass.api.services.fastmodel import load_fast_model, preload
from twopass.api.services.service import TwopassService
from twopass.config import Settings
from twopass.exceptions import TwopassError
from twopass.jobs.memory import MemoryJobStore
from twopass.queue.memory import MemoryQueue

REPO = Path(__file__).resolve().parents[2]


def test_models_defined_in_the_block_build_on_first_use_and_validate_as_usual() -> None:
    with deferred_model_builds() as deferred:

        class Inside(BaseModel):
            label: str
            score: float

    class Outside(BaseModel):
        label: str

    # The pinned pydantic has the default the deferral sets: an upgrade without it fails here.
    assert deferred is True
    assert Inside.__pydantic_complete__ is False and Outside.__pydantic_complete__ is True
    assert Inside(label="cat", score="0.5").score == 0.5  # built now, and validates
    assert Inside.__pydantic_complete__ is True
    with pytest.raises(ValidationError):
        Inside(label="cat", score="high")


def test_the_default_is_restored_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError), deferred_model_builds():
        raise RuntimeError("import failed")

    class After(BaseModel):
        x: int

    assert After.__pydantic_complete__ is True


def test_a_preloaded_fast_model_is_the_one_the_service_serves(fast_classifier: object) -> None:
    settings = Settings()
    future = preload(settings)
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue(), future)
    assert service.classifier is future.result()
    tensor = service.decode((REPO / "layers/twopass/twopass/data/cat.jpg").read_bytes())
    prediction, _ = service.classify(tensor)
    assert prediction.label == load_fast_model(settings).predict(tensor).label


def test_a_preload_that_fails_raises_where_the_model_is_first_used(tmp_path: Path) -> None:
    settings = Settings(fast_model=str(tmp_path / "missing.onnx"))
    future: Future[object] = preload(settings)  # type: ignore[assignment]
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue(), future)  # type: ignore[arg-type]
    with pytest.raises(TwopassError) as raised:
        service.warm_up()
    with pytest.raises(TwopassError) as direct:
        load_fast_model(settings)
    assert str(raised.value) == str(direct.value)  # the same error a load without the thread raises


def test_the_lambda_init_serves_the_same_openapi_document_as_an_eager_app() -> None:
    """The entry point as Lambda imports it (deferred builds, routes loading on demand) documents the
    same API, once its routes have loaded, as an app built with nothing deferred."""
    from twopass.api.app import create_app

    env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}  # no model load, no AWS
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "layers" / "twopass"), str(REPO)])
    code = (
        "import json, runpy; from fastapi.testclient import TestClient; "
        "app = runpy.run_path('functions/api/app.py')['app']; "
        "client = TestClient(app); assert client.get('/health').status_code == 200; "
        "print(json.dumps(client.get('/openapi.json').json()))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == create_app(settings=Settings.from_env()).openapi()
