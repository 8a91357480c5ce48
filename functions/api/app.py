"""API Lambda entry point: the twopass FastAPI app behind Mangum (REST and HTTP API events)."""

import os

from mangum import Mangum
from twopass.api.app import create_app

app = create_app()
if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):
    # Load the fast model during init, which runs at full CPU before the first request is billed.
    _ = app.state.service().classifier

handler = Mangum(app, lifespan="off")
