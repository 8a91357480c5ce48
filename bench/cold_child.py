"""One cold start, run in a fresh interpreter by ``bench/cold_start.py``; prints one JSON line.

Imports ``functions/api/app.py`` as Lambda does (``AWS_LAMBDA_FUNCTION_NAME`` set, so the fast
model loads during init) and answers one real API Gateway event against the emulator named by
``AWS_ENDPOINT_URL``. ``--overlap`` prototypes loading the model on a thread while the web
framework imports (a change suggested for ``functions/api/app.py``).

``--memory``: the same app and Mangum adapter over the in-memory job store and queue (no emulator,
no boto3), warmed up as the Lambda init does, answering ``GET /predict/test``: what the framework,
twopass and the model cost on their own (``bench/side_by_side.py``).
"""

import time

WALL0 = time.time()
T0 = time.perf_counter()

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

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
    """Import, build over in-memory backends, warm up, answer one ``GET /predict/test`` through Mangum."""
    from mangum import Mangum

    from twopass.api.app import create_app
    from twopass.api.services.service import TwopassService
    from twopass.config import Settings
    from twopass.jobs.memory import MemoryJobStore
    from twopass.queue.memory import MemoryQueue

    settings = Settings.from_env()
    service = TwopassService(settings, MemoryJobStore(), MemoryQueue())
    handler = Mangum(create_app(service, defer_routes=True), lifespan="off")  # as functions/api/app.py
    service.warm_up()
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


def main() -> None:
    if "--memory" in sys.argv:
        memory_main()
        return
    overlap = "--overlap" in sys.argv
    marks: dict[str, float] = {}
    loader = None
    if overlap:
        import threading

        from twopass.config import Settings
        from twopass.models.runtime import Classifier

        settings = Settings.from_env()
        box: dict[str, Classifier] = {}

        def load() -> None:
            box["c"] = Classifier.from_location(
                settings.fast_model, providers=settings.providers, intra_op_threads=settings.intra_op_threads
            )

        loader = threading.Thread(target=load)
        loader.start()
        os.environ.pop("AWS_LAMBDA_FUNCTION_NAME", None)  # the module must not load a second copy
    spec = importlib.util.spec_from_file_location("lambda_handler", REPO / "functions/api/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if loader is not None:
        service = module.app.state.twopass.service
        loader.join()
        service.__dict__["classifier"] = box["c"]
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
