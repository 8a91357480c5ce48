"""API Lambda entry point: the twopass FastAPI app behind Mangum (REST and HTTP API events)."""

import os
from typing import Any

from twopass.api.coldstart import lambda_app

# The fast model loads on a thread while the framework imports; only the fast path's routes load
# on an on-demand cold start (twopass.api.coldstart says why and what else).
app, _asgi = lambda_app()

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and os.environ.get("POWERTOOLS_TRACE_DISABLED", "").lower() != "true":
    # X-Ray subsegments for every DynamoDB/SQS call. Imported only when on: the X-Ray SDK alone
    # costs ~0.7 s of cold start, which the template's ApiTracing=false saves.
    from aws_lambda_powertools import Tracer

    tracer = Tracer(service="twopass-api")

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return _answer(event, context)

else:

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return _answer(event, context)


def _answer(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return _asgi(event, context)
    finally:
        # Whatever a route recorded goes out before the sandbox can be frozen (the fast path's own
        # metrics have flushed already: on Lambda they flush per request).
        app.state.twopass.flush_telemetry()
