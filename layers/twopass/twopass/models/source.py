"""Where model files come from: a local path today, other schemes behind the same small interface."""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from urllib.parse import urlparse

from twopass.exceptions import ModelLoadError
from twopass.models.card import card_path


class ModelSource(ABC):
    """Resolves a model location to a local ``.onnx`` file with its card beside it."""

    @abstractmethod
    def fetch(self, location: str) -> Path:
        """Return a local path to the ``.onnx`` named by ``location`` (its card next to it)."""


class LocalSource(ModelSource):
    def fetch(self, location: str) -> Path:
        path = Path(location.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        if not card_path(path).is_file():
            raise ModelLoadError(f"model card not found beside the model: {card_path(path)}")
        return path


class S3Source(ModelSource):
    """Downloads ``s3://bucket/key.onnx`` and its card into a cache directory once per process."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        # Lambda and containers can only write under the temp dir; one cache per process is fine.
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "twopass-models"

    def fetch(self, location: str) -> Path:
        from twopass.aws import client

        parsed = urlparse(location)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        target = self.cache_dir / bucket / key
        s3 = client("s3")
        try:
            for remote, local in ((key, target), (str(card_path(Path(key))), card_path(target))):
                if not local.exists():
                    local.parent.mkdir(parents=True, exist_ok=True)
                    tmp = local.with_suffix(local.suffix + ".part")
                    s3.download_file(bucket, remote, str(tmp))
                    tmp.replace(local)
        except Exception as exc:  # botocore raises many types; all mean "could not fetch"
            raise ModelLoadError(f"could not fetch {location}: {exc}") from exc
        return target


_SOURCES: dict[str, ModelSource] = {"": LocalSource(), "file": LocalSource(), "s3": S3Source()}


def register_source(scheme: str, source: ModelSource) -> None:
    """Plug in another scheme (``https``, ``gs``, a model registry…)."""
    _SOURCES[scheme] = source


def resolve(location: str) -> Path:
    scheme = urlparse(location).scheme if "://" in location else ""
    try:
        source = _SOURCES[scheme]
    except KeyError:
        raise ModelLoadError(f"no model source for scheme {scheme!r} in {location!r}") from None
    return source.fetch(location)
