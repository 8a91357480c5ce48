"""API Lambda entry point: the twopass FastAPI app behind Mangum (REST and HTTP API events)."""

import os
from typing import Any

from mangum import Mangum

from twopass.api.app import create_app

app = create_app()
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
        return _asgi(event, context)

else:

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return _asgi(event, context)
