"""The slow models a worker serves with: the current one, and a candidate being rolled out beside it.

A candidate (``TWOPASS_CANDIDATE_SLOW_MODEL``: a path or ``s3://`` URI, loaded once at start) runs in
one of two modes (``TWOPASS_ROLLOUT_MODE``):

* ``shadow`` / ``shadow:<percent>``: on that share of batches (all of them without a percentage) the
  candidate runs beside the current model on the same images; its label and whether it agrees with
  the current model are recorded on the job and in metrics, and it is never served.
* ``canary:<percent>``: the candidate serves that share of jobs. Which jobs is a hash of the job id,
  so a redelivered job meets the same model again.

Every slow answer also says which model version served it and whether its top-1 is the fast model's
(``agreement``: the fast top-1 travels with the job, see ``twopass.api.services.shortcuts``), a quality signal
that needs no labels.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from twopass.cascade import FAST_CLASS_ID
from twopass.config import Settings
from twopass.exceptions import ConfigError
from twopass.models.runtime import Classifier, Prediction
from twopass.queue.base import JobMessage
from twopass.worker.models import load_slow

logger = logging.getLogger(__name__)

_MODE = re.compile(r"^(shadow|canary)(?::(\d+(?:\.\d+)?))?$")


@dataclass(frozen=True)
class Rollout:
    """How the candidate runs: ``off``, ``shadow`` on ``percent`` of batches, ``canary`` for ``percent`` of jobs."""

    kind: Literal["off", "shadow", "canary"] = "off"
    percent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Rollout:
        text = text.strip().lower()
        if text in ("", "off"):
            return cls()
        match = _MODE.match(text)
        if match is None:
            raise ConfigError(
                f"TWOPASS_ROLLOUT_MODE={text!r}: expected shadow, shadow:<percent> or canary:<percent> (or empty)"
            )
        kind, number = match[1], match[2]
        if kind == "canary" and number is None:
            raise ConfigError("TWOPASS_ROLLOUT_MODE: canary needs the share of jobs it serves, e.g. canary:10")
        percent = 100.0 if number is None else float(number)
        if not 0.0 <= percent <= 100.0:
            raise ConfigError(f"TWOPASS_ROLLOUT_MODE={text!r}: the percentage must be 0 to 100")
        return cls(kind, percent)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "off" if self.kind == "off" else f"{self.kind}:{self.percent:g}"


def canary_share(job_id: str, percent: float) -> bool:
    """Whether a canary serving ``percent`` % of jobs serves this one: a stable function of the job id."""
    bucket = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") % 10_000
    return bucket < round(percent * 100)


def agreement(context: Mapping[str, str], slow_class: int) -> bool | None:
    """Whether the slow top-1 is the fast top-1 the job carried; ``None`` when it carried none."""
    fast = context.get(FAST_CLASS_ID)
    if fast is None or not fast.lstrip("-").isdigit():
        return None
    return int(fast) == slow_class


@dataclass
class Answer:
    """One job's slow answer, the model that gave it, and the candidate's shadow answer if it ran."""

    prediction: Prediction
    model: Classifier
    shadow: Prediction | None = None


class SlowModels:
    """Runs a batch on the current model and, as the rollout says, on the candidate."""

    def __init__(
        self,
        current: Classifier,
        candidate: Classifier | None = None,
        rollout: Rollout | None = None,
        *,
        image: Callable[[JobMessage], bytes] | None = None,
        max_pixels: int = 40_000_000,
        rng: random.Random | None = None,
    ) -> None:
        self.current = current
        self.candidate = candidate
        self.rollout = rollout or Rollout()
        if self.rollout.kind != "off" and candidate is None:
            raise ConfigError(f"rollout mode {self.rollout} needs a candidate model (TWOPASS_CANDIDATE_SLOW_MODEL)")
        #: Reads a job's image again when the candidate's preprocessing differs from the current model's.
        self._image = image
        self._max_pixels = max_pixels
        self._rng = rng or random.Random()  # sampling batches, not secrets
        self._same_input = candidate is None or candidate.card.preprocessing == current.card.preprocessing

    @classmethod
    def from_settings(
        cls, settings: Settings, current: Classifier, image: Callable[[JobMessage], bytes] | None = None
    ) -> SlowModels:
        """The current model and, when the settings name one, the candidate, loaded once here."""
        rollout = Rollout.parse(settings.rollout_mode)
        candidate = None
        if settings.candidate_slow_model:
            if rollout.kind == "off":
                logger.warning("a candidate slow model is configured but TWOPASS_ROLLOUT_MODE is off: not loaded")
            else:
                candidate = load_slow(settings, settings.candidate_slow_model)
                logger.info("candidate %s %s in %s mode", candidate.name, candidate.card.version, rollout)
        elif rollout.kind != "off":
            raise ConfigError(f"TWOPASS_ROLLOUT_MODE={settings.rollout_mode} needs TWOPASS_CANDIDATE_SLOW_MODEL")
        return cls(current, candidate, rollout, image=image, max_pixels=settings.max_image_pixels)

    def serves(self, message: JobMessage) -> Classifier:
        """The model whose answer this job gets."""
        canary = self.candidate is not None and self.rollout.kind == "canary"
        if canary and canary_share(message.job_id, self.rollout.percent):
            assert self.candidate is not None
            return self.candidate
        return self.current

    def _shadowing(self) -> bool:
        return (
            self.candidate is not None
            and self.rollout.kind == "shadow"
            and self._rng.random() * 100 < self.rollout.percent
        )

    def _candidate_inputs(self, messages: Sequence[JobMessage], tensors: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The candidate's inputs: the same tensors when both models preprocess alike, else decoded again."""
        if self._same_input:
            return list(tensors)
        assert self.candidate is not None and self._image is not None
        return [self.candidate.tensor(self._image(m), max_pixels=self._max_pixels) for m in messages]

    def predict(self, messages: Sequence[JobMessage], tensors: Sequence[np.ndarray]) -> list[Answer]:
        """Each job's answer, in order: one ``session.run`` per model that serves part of the batch."""
        serving = [self.serves(m) for m in messages]
        answers: list[Answer | None] = [None] * len(messages)
        for model in {id(m): m for m in serving}.values():
            index = [i for i, m in enumerate(serving) if m is model]
            chosen = [tensors[i] for i in index]
            if model is not self.current:
                chosen = self._candidate_inputs([messages[i] for i in index], chosen)
            for i, prediction in zip(index, model.predict_batch(chosen), strict=True):
                answers[i] = Answer(prediction, model)
        if self._shadowing():
            assert self.candidate is not None
            shadows = self.candidate.predict_batch(self._candidate_inputs(messages, tensors))
            for answer, shadow in zip(answers, shadows, strict=True):
                assert answer is not None
                answer.shadow = shadow
        return [a for a in answers if a is not None]

    def result(self, answer: Answer, message: JobMessage, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (the prediction's result shape) plus who answered, its version and the agreements."""
        out = {
            **base,
            "answered_by": "slow",
            "version": answer.model.card.version,
            "agreement": agreement(message.context, answer.prediction.class_ids[0]),
        }
        if answer.shadow is not None and self.candidate is not None:
            out["shadow"] = {
                "model": self.candidate.name,
                "version": self.candidate.card.version,
                "label": answer.shadow.label,
                "class_id": answer.shadow.class_ids[0],
                "agreement": answer.shadow.class_ids[0] == answer.prediction.class_ids[0],
            }
        return out
