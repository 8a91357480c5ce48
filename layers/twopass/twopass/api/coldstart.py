"""The API Lambda's init, ordered so that a cold start's first request waits as little as it can.

Three things overlap or wait:

* **The fast model loads on a thread from the start** (``fastmodel.preload``): building the
  onnxruntime session runs mostly outside the GIL, while the web framework's import holds it.
* **Pydantic models defined while the app imports are built on first use** (:func:`deferred_model_builds`):
  pydantic builds every model's validator and serializer when its class is defined, and FastAPI's
  OpenAPI models alone (some 80 classes a cold start never uses) cost ~0.1 s. The fast path's own
  models are built as its routes are added, before the first request, as without the deferral.
* **Only the fast path's routes load** on an on-demand cold start (``create_app(defer_routes=True)``);
  where init is off a request's clock (SnapStart snapshots it, provisioned concurrency runs it
  ahead of traffic) every route loads now, so no request pays for it later.

This module imports neither FastAPI nor pydantic at the top: whatever imports it must not start
what it is here to defer.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from twopass.api.services.fastmodel import preload
from twopass.config import Settings
from twopass.models.runtime import Classifier

if TYPE_CHECKING:
    from fastapi import FastAPI
    from mangum import Mangum

    from twopass.api.services.service import TwopassService

#: ``AWS_LAMBDA_INITIALIZATION_TYPE`` values whose init runs before any request is waiting.
INIT_AHEAD = frozenset({"snap-start", "provisioned-concurrency"})

ServiceFactory = Callable[[Settings, "Future[Classifier] | None"], "TwopassService"]


@contextlib.contextmanager
def deferred_model_builds() -> Iterator[bool]:
    """Within the block, new pydantic models build their validators on first use (``defer_build``).

    Yields whether the deferral is on: it sets pydantic's default for ``defer_build``, which is not
    public API; a pydantic without that default gets no deferral (and tests/unit/test_coldstart.py
    fails, so that an upgrade which loses it is noticed). Models that set ``defer_build`` themselves
    keep their own choice; the default is restored when the block ends, however it ends.
    """
    try:
        from pydantic._internal import _config
    except ImportError:  # pragma: no cover - a pydantic without the module: no deferral
        yield False
        return
    defaults = getattr(_config, "config_defaults", None)
    if not isinstance(defaults, dict) or "defer_build" not in defaults:  # pragma: no cover
        yield False
        return
    before = defaults["defer_build"]
    defaults["defer_build"] = True
    try:
        yield True
    finally:
        defaults["defer_build"] = before


def on_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))


def lambda_app(settings: Settings | None = None, service: ServiceFactory | None = None) -> tuple[FastAPI, Mangum]:
    """The API Lambda's app and its Mangum adapter, built as its init should build them (see the module's text).

    ``service``: builds the service from the settings and the fast model loading (default: the
    backends the settings name, ``TwopassService.from_settings``). On Lambda the fast model is loaded before this
    returns (init runs at full CPU before the first request is billed, and SnapStart snapshots it).
    """
    settings = settings or Settings.from_env()
    fast_model = preload(settings) if on_lambda() else None
    with deferred_model_builds():
        from mangum import Mangum

        from twopass.api.app import create_app
        from twopass.api.services.service import TwopassService
    ahead = os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") in INIT_AHEAD
    if service is None and fast_model is None:
        built = None  # off Lambda: built on first use, as create_app does without a service
    else:
        built = (service or TwopassService.from_settings)(settings, fast_model)
    app = create_app(built, settings, defer_routes=not ahead)
    adapter = Mangum(app, lifespan="off")
    if on_lambda():
        app.state.twopass.service.warm_up()  # waits for the thread, or loads it here if none was started
    return app, adapter
