"""The fast model: loaded on first use, or started on a thread of its own while the rest imports.

A Lambda cold start spends most of its time importing the web framework, which holds the GIL,
while building the onnxruntime session mostly runs outside it: :func:`preload` starts the load
first so the two overlap (``twopass.api.coldstart``). Only the model's own modules (numpy,
onnxruntime, twopass.models) are imported before the thread starts.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from twopass.config import Settings
from twopass.models.runtime import Classifier


def load_fast_model(settings: Settings) -> Classifier:
    """The fast model the settings name, warmed up, checked against the slow model's classes."""
    from twopass.models.pack import check_pair

    classifier = Classifier.from_location(
        settings.fast_model,
        providers=settings.providers,
        intra_op_threads=settings.intra_op_threads,
        top_k=settings.top_k,
    )
    check_pair(settings.fast_model, settings.slow_model)  # both passes must name the same classes
    return classifier


def preload(settings: Settings) -> Future[Classifier]:
    """Start :func:`load_fast_model` on a daemon thread; its error, if any, is raised where the
    future's result is read (the service's first use of the model: Lambda init's warm-up)."""
    future: Future[Classifier] = Future()

    def load() -> None:
        try:
            future.set_result(load_fast_model(settings))
        except BaseException as exc:  # noqa: BLE001  (all of it to the reader: a future never set would hang init)
            future.set_exception(exc)

    threading.Thread(target=load, name="fast-model", daemon=True).start()
    return future
