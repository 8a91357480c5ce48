"""``python -m twopass.local.emulator``: moto server, with DynamoDB requests made atomic.

moto checks a ``ConditionExpression`` and then writes without a lock, so under its threaded server
two concurrent conditional updates of one item can both pass: something real DynamoDB never lets
happen, and exactly what twopass's "written final once" guarantee rests on. This server runs moto's
own WSGI app with DynamoDB calls taken one at a time; SQS and the rest stay concurrent, so long
polls never wait on each other. Its Cognito answers browsers' preflights, as Cognito's endpoint does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class AtomicDynamoDB:
    """WSGI middleware: one DynamoDB request at a time, everything else straight through."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            with self.lock:
                # Drain the body inside the lock: a WSGI app may do its work lazily.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


class CognitoCors:
    """WSGI middleware: browsers may call the emulator's Cognito, as they call Cognito's public endpoint
    (a web page signs its users in with ``InitiateAuth``). moto cannot tell which service a preflight is
    for (it carries no ``X-Amz-Target``), so preflights that ask to send that header are answered here.
    """

    ALLOW_HEADERS = "content-type, x-amz-target, x-amz-user-agent, cache-control"

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        asked = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "").lower()
        if environ.get("REQUEST_METHOD") == "OPTIONS" and "x-amz-target" in asked:
            start_response("200 OK", [*self._cors(), ("Access-Control-Max-Age", "600"), ("Content-Length", "0")])
            return [b""]
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("AWSCognitoIdentityProviderService."):
            return self.app(environ, start_response)

        def with_cors(status: str, headers: list[tuple[str, str]], *rest: Any) -> Any:
            named = {name.lower() for name, _ in headers}
            extra = [h for h in self._cors() if h[0].lower() not in named]
            return start_response(status, [*headers, *extra], *rest)

        return self.app(environ, with_cors)

    def _cors(self) -> list[tuple[str, str]]:
        return [
            ("Access-Control-Allow-Origin", "*"),
            ("Access-Control-Allow-Methods", "POST"),
            ("Access-Control-Allow-Headers", self.ALLOW_HEADERS),
        ]


def main(argv: Sequence[str] | None = None) -> int:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(prog="python -m twopass.local.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("-p", "--port", type=int, default=4566, help="port (default 4566)")
    args = parser.parse_args(argv)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        # Everything the emulator holds is in memory and dies with it: skip the interpreter's
        # teardown of moto's backends (most of a second) and drop open long polls at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    app = CognitoCors(AtomicDynamoDB(DomainDispatcherApplication(create_backend_app)))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
