"""The calibrated cascade: when the fast model is sure enough, its answer is final and no slow pass runs.

A confidence threshold (``TWOPASS_CASCADE_THRESHOLD``, found with ``twopass calibrate``) says how sure
"sure enough" is: a fast top-1 probability at or above it answers the job. Each request may override
the policy with ``slow``:

* ``auto`` (the default) follows the threshold (with the threshold off, every job goes to the slow model);
* ``always`` queues the slow pass whatever the fast model says;
* ``never`` answers with the fast model alone and creates no job at all.

This module only decides; the API carries the decision out (``twopass.api.usecases.submit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from twopass.exceptions import ConfigError, InvalidRequestError


class SlowMode(StrEnum):
    """What a request asks of the slow model."""

    AUTO = "auto"
    ALWAYS = "always"
    NEVER = "never"


#: The request field's type, for the OpenAPI schema.
SlowModeName = Literal["auto", "always", "never"]


#: Keys of a job message's ``context`` (strings) that the worker reads: the fast answer, to compare the
#: slow one with (agreement), and the result cache key's parts (only while the cache is on).
FAST_CLASS_ID = "fast_class_id"
FAST_LABEL = "fast_label"
FAST_VERSION = "fast_version"
OWNER = "owner"
IMAGE_SHA256 = "image_sha256"


class Route(StrEnum):
    """Where a job goes once the fast model has answered."""

    #: Queue the slow pass.
    SLOW = "slow"
    #: The fast answer is final: record the job succeeded at once, queue nothing.
    FAST = "fast"
    #: The fast answer is all that was asked for: no job at all.
    NO_JOB = "no_job"


def parse_mode(value: str | None) -> SlowMode:
    """A request's ``slow`` value (``None``: the default); anything else is a 400 the client can fix."""
    if value is None or value == "":
        return SlowMode.AUTO
    try:
        return SlowMode(value.strip().lower())
    except ValueError:
        allowed = ", ".join(m.value for m in SlowMode)
        raise InvalidRequestError("invalid_slow_mode", f"slow must be one of {allowed}; got {value!r}") from None


def check_threshold(threshold: float) -> float:
    """The configured threshold, refused when it cannot be a probability (0 turns the cascade off)."""
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"TWOPASS_CASCADE_THRESHOLD must be between 0 and 1 (0 = off); got {threshold}")
    return threshold


@dataclass(frozen=True)
class Cascade:
    """The threshold policy. ``threshold`` 0 is off: every ``auto`` job goes to the slow model."""

    threshold: float = 0.0

    def __post_init__(self) -> None:
        check_threshold(self.threshold)

    @property
    def enabled(self) -> bool:
        return self.threshold > 0.0

    def needs_fast_answer_first(self, mode: SlowMode) -> bool:
        """Whether the route depends on the fast model's confidence (else it is known before inference)."""
        return mode is SlowMode.AUTO and self.enabled

    def route(self, mode: SlowMode, fast_probability: float) -> Route:
        """Where the job goes, given the fast model's top-1 probability."""
        if mode is SlowMode.NEVER:
            return Route.NO_JOB
        if mode is SlowMode.AUTO and self.enabled and fast_probability >= self.threshold:
            return Route.FAST
        return Route.SLOW
