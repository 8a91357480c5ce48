"""One cold start, run in a fresh interpreter by ``bench/cold_start.py``; prints one JSON line.

Imports ``functions/api/app.py`` as Lambda does (``AWS_LAMBDA_FUNCTION_NAME`` set, so the fast
model loads during init) and answers one real API Gateway event against the emulator named by
``AWS_ENDPOINT_URL``. The fast model loads on a thread of its own while the web framework imports
(``twopass.api.coldstart``): ``model_load_s`` overlaps ``init_s``, it is not a part of it.

``--memory``: the same app and Mangum adapter over the in-memory job store and queue (no emulator,
no boto3), warmed up as the Lambda init does, answering ``GET /predict/test``: what the framework,
twopass and the model cost on their own (``bench/side_by_side.py``).

``--floor MODEL``: the same shape of run without twopass: import what any FastAPI app on Lambda
serving an onnxruntime model imports (FastAPI, Mangum, numpy, onnxruntime, Pillow), load ``MODEL``
and classify the cat once: the least a cold start of this kind costs on this machine.
"""

import time

WALL0 = time.time()
T0 = time.perf_counter()

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Context:
    """What Lambda passes a handler, as far as Mangum, powertools and the app read it."""

    function_name = "twopass-ApiFunction"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:twopass-ApiFunction"
    memory_limit_in_mb = 2048
    aws_request_id = "8f6f3b5c-0000-4000-8000-000000000001"
    log_group_name = "/aws/lambda/twopass-ApiFunction"
    log_stream_name = "2026/11/22/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 15000


def memory_main() -> None:
    """The Lambda init (``twopass.api.coldstart``) over in-memory backends, then one ``GET /predict/test``
    through Mangum."""
    from twopass.api.coldstart import lambda_app

    def memory_service(settings: Any, fast_model: Any) -> Any:
        from twopass.api.services.service import TwopassService
        from twopass.jobs.memory import MemoryJobStore
        from twopass.queue.memory import MemoryQueue

        return TwopassService(settings, MemoryJobStore(), MemoryQueue(), fast_model)

    app, handler = lambda_app(service=memory_service)
    service = app.state.twopass.service
    init_done = time.perf_counter()
    print("MARK init-done", file=sys.stderr, flush=True)
    event = json.loads((REPO / "tests/events/rest_predict_test.json").read_text())
    response = handler(event, Context())  # type: ignore[arg-type]
    answered = time.perf_counter()
    if response.get("statusCode") != 200:
        raise SystemExit(f"first request failed: {response}")
    handler(event, Context())  # type: ignore[arg-type]
    second = time.perf_counter()
    result = {
        "wall_start": WALL0,
        "init_s": init_done - T0,
        "model_load_s": service.classifier.load_seconds,
        "first_answer_s": answered - init_done,
        "second_answer_s": second - answered,
        "total_in_process_s": answered - T0,
        "wall_end": time.time(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def floor_main(model: str) -> None:
    """What the dependencies cost alone (``--floor``): their imports, one session, one answer."""
    import fastapi  # noqa: F401
    import mangum  # noqa: F401
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    t_load = time.perf_counter()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    session.run(None, {name: np.zeros((1, *shape[1:]), dtype=np.float32)})  # warm-up, as the API's load does
    init_done = time.perf_counter()

    def answer() -> int:
        image = Image.open(REPO / "layers/twopass/twopass/data/cat.jpg").convert("RGB").resize((shape[2], shape[3]))
        pixels = (np.asarray(image, dtype=np.float32) / 255.0 - 0.5) / 0.5
        (logits,) = session.run(None, {name: pixels.transpose(2, 0, 1)[None]})
        return int(np.argmax(logits))

    answer()
    answered = time.perf_counter()
    answer()
    second = time.perf_counter()
    result = {
        "wall_start": WALL0,
        "init_s": init_done - T0,
        "model_load_s": init_done - t_load,
        "first_answer_s": answered - init_done,
        "second_answer_s": second - answered,
        "total_in_process_s": answered - T0,
        "wall_end": time.time(),
    }
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    if "--memory" in sys.argv:
        memory_main()
        return
    if "--floor" in sys.argv:
        floor_main(sys.argv[sys.argv.index("--floor") + 1])
        return
    marks: dict[str, float] = {}
    spec = importlib.util.spec_from_file_location("lambda_handler", REPO / "functions/api/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    classifier = module.app.state.twopass.service.classifier
    marks["init_done"] = time.perf_counter()
    print("MARK init-done", file=sys.stderr, flush=True)
    event = json.loads((REPO / "tests/events/rest_predict_binary.json").read_text())
    response = module.handler(event, Context())
    marks["answered"] = time.perf_counter()
    if response.get("statusCode") != 200:
        raise SystemExit(f"first request failed: {response}")
    module.handler(event, Context())
    marks["second"] = time.perf_counter()
    print(
        "RESULT "
        + json.dumps(
            {
                "wall_start": WALL0,
                "init_s": marks["init_done"] - T0,
                "model_load_s": classifier.load_seconds,
                "first_answer_s": marks["answered"] - marks["init_done"],
                "second_answer_s": marks["second"] - marks["answered"],
                "total_in_process_s": marks["answered"] - T0,
                "wall_end": time.time(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
