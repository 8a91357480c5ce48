"""A stand-in for the context object Lambda passes a handler, to invoke handlers outside Lambda."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LambdaContext:
    """The attributes and method of ``awslambdaric``'s context that handlers and powertools read."""

    function_name: str = "twopass-ApiFunction"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:twopass-ApiFunction"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = "8f6f3b5c-0000-4000-8000-000000000001"
    log_group_name: str = "/aws/lambda/twopass-ApiFunction"
    log_stream_name: str = "2026/11/22/[$LATEST]abcdef"
    remaining_ms: int = 15000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms
