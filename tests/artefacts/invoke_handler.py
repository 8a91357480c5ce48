"""Invoke a Lambda handler the way the python3.12 runtime does, for tests, from a clean environment.

    python invoke_handler.py CODE_DIR MODULE.FUNCTION FD

Imports the handler once (init), then for each API Gateway event read as one JSON line on stdin
calls it with a context object and writes the response as one JSON line to file descriptor FD;
stdout stays the function's log, as in Lambda. Standard library only: the environment under test
provides everything else.
"""

import importlib
import json
import os
import sys
import uuid


class Context:
    """The attributes of the runtime's context object that handlers and powertools read."""

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.memory_limit_in_mb = 2048
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "2026/11/22/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 15000


def main() -> None:
    code_dir, handler, fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sys.path.insert(0, code_dir)  # the runtime puts the function's code first (LAMBDA_TASK_ROOT)
    module, _, name = handler.rpartition(".")
    function = getattr(importlib.import_module(module), name)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        for line in sys.stdin:
            # The runtime sets a fresh trace header for each invocation.
            os.environ["_X_AMZN_TRACE_ID"] = (
                f"Root=1-{os.urandom(4).hex()}-{os.urandom(12).hex()};Parent={os.urandom(8).hex()};Sampled=1"
            )
            response = function(json.loads(line), Context(os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "test")))
            out.write(json.dumps(response) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
