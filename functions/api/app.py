"""API Lambda entry point: the twopass FastAPI app behind Mangum (REST and HTTP API events)."""

import os
from typing import Any

from mangum import Mangum

from twopass.api.app import create_app

# An on-demand cold start imports only what a prediction needs; the other routes load on their first
# request. Where init is off the request's clock (SnapStart snapshots it, provisioned concurrency runs
# it ahead of traffic) everything loads now, so no request pays for it later.
_INIT_AHEAD = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") in ("snap-start", "provisioned-concurrency")
app = create_app(defer_routes=not _INIT_AHEAD)
_asgi = Mangum(app, lifespan="off")

if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # Init runs at full CPU before the first request is billed, and SnapStart snapshots its
    # result: load the fast model and create the AWS clients here, not on the first request.
    app.state.twopass.service.warm_up()

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
