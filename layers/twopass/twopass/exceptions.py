"""Every error twopass raises on purpose derives from :class:`TwopassError`."""

from __future__ import annotations


class TwopassError(Exception):
    """Root of every twopass error."""


class ConfigError(TwopassError):
    """A setting is missing or malformed."""


class InvalidImageError(TwopassError):
    """The bytes are not an image twopass will decode."""


class ImageTooLargeError(InvalidImageError):
    """The image is over the byte or pixel limit."""


class ModelLoadError(TwopassError):
    """A model or its card could not be loaded."""


class ProviderUnavailableError(ModelLoadError):
    """An execution provider the settings require (CUDA) did not load: the model would run elsewhere."""


class DependencyError(TwopassError):
    """A backing service (queue, table, bucket) failed or could not be reached."""


class DependencyTimeoutError(DependencyError):
    """A backing service did not answer in time: the call's outcome is unknown."""


class ConditionFailedError(TwopassError):
    """A conditional write was refused because the item's state did not allow it."""

    def __init__(self, message: str, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        #: Per-item cancellation codes of a refused transaction (``"ConditionalCheckFailed"``, ``"None"``…).
        self.reasons = reasons


class MissingObjectError(TwopassError):
    """An object a job refers to (e.g. its claim-checked image) no longer exists."""


class EnqueueError(DependencyError):
    """The job was recorded but could not be published to the queue."""


class MessageFormatError(TwopassError):
    """A queue message is not a twopass job message."""


class JobNotFoundError(TwopassError):
    """No job has that id (or its record has expired)."""


class IdempotencyConflictError(TwopassError):
    """The idempotency key already belongs to a job."""


class InvalidRequestError(TwopassError):
    """The request is malformed in a way the client can fix (HTTP 400); ``code`` names the problem."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class IdempotencyKeyReusedError(TwopassError):
    """The Idempotency-Key was used before with a different image."""


class RequestInProgressError(TwopassError):
    """A request with the same Idempotency-Key has not finished yet."""
