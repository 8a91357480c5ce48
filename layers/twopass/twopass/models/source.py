"""Where model files come from: a local path today, other schemes behind the same small interface."""

from __future__ import annotations

import json
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from twopass.exceptions import ModelLoadError
from twopass.models.card import card_path
from twopass.models.labels import IMAGENET
from twopass.models.pack import PACK_CARD, ModelPackError, find_card, one_line, validate_card


class ModelSource(ABC):
    """Resolves a model location to a local ``.onnx`` file with its card beside it."""

    @abstractmethod
    def fetch(self, location: str) -> Path:
        """Return a local path to the pack directory or ``.onnx`` named by ``location`` (its card next to it)."""


class LocalSource(ModelSource):
    """A pack directory, or an ``.onnx`` with its card beside it; ``load_pack`` checks the rest."""

    def fetch(self, location: str) -> Path:
        path = Path(location.removeprefix("file://")).expanduser()
        find_card(path)  # one line naming what is missing, before anything else is tried
        return path


class S3Source(ModelSource):
    """Downloads a pack into a cache directory once per process (and per version of the model file).

    ``s3://bucket/prefix/`` is a pack: ``card.json`` first, then the files it names (the model, a labels
    file). Its card must carry the model's ``sha256``: the cache is keyed by it, so a new version at the
    same prefix is a new download, and ``load_pack`` checks the file against it. ``s3://bucket/key.onnx``
    is a model with ``key.card.json`` beside it, as before.
    """

    def __init__(self, cache_dir: Path | None = None) -> None:
        # Lambda and containers can only write under the temp dir; one cache per process is fine.
        self.cache_dir = cache_dir or Path(tempfile.gettempdir()) / "twopass-models"

    def fetch(self, location: str) -> Path:
        from twopass.aws import client

        parsed = urlparse(location)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        s3 = client("s3")
        try:
            if not key.endswith(".onnx"):
                return self._pack(s3, location, bucket, key.rstrip("/") + "/")
            target = self.cache_dir / bucket / key
            for remote, local in ((key, target), (str(card_path(Path(key))), card_path(target))):
                _download(s3, bucket, remote, local)
            labels = json.loads(card_path(target).read_text()).get("labels")
            if _is_file_name(labels):
                _download(s3, bucket, str(Path(key).parent / labels), target.parent / labels)
        except ModelLoadError:
            raise
        except Exception as exc:  # botocore raises many types; all mean "could not fetch"
            raise ModelLoadError(f"could not fetch {location}: {one_line(str(exc))}") from exc
        return target

    def _pack(self, s3: Any, location: str, bucket: str, prefix: str) -> Path:
        body = s3.get_object(Bucket=bucket, Key=prefix + PACK_CARD)["Body"].read()
        where = f"{location.rstrip('/')}/{PACK_CARD}"
        try:
            card = json.loads(body)
        except ValueError as exc:
            raise ModelPackError(f"{where}: not a readable JSON card ({one_line(str(exc))})") from exc
        validate_card(card, where)
        digest = card.get("sha256", "")
        if not digest:
            raise ModelPackError(
                f"{where}: a pack in S3 needs the model's sha256 in its card; `twopass model init` writes it"
            )
        target: Path = self.cache_dir / bucket / prefix / str(digest)[:16]
        if not (target / PACK_CARD).is_file():
            names = [card["file"]] + ([card["labels"]] if _is_file_name(card["labels"]) else [])
            for name in names:
                _download(s3, bucket, prefix + name, target / name)
            # The card last: its presence marks a complete copy for the next start of this process.
            _write(target / PACK_CARD, body)
        return target


def _is_file_name(labels: object) -> bool:
    return isinstance(labels, str) and labels != IMAGENET and not labels.startswith(IMAGENET + " ")


def _download(s3: Any, bucket: str, key: str, local: Path) -> None:
    if local.exists():
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_suffix(local.suffix + ".part")
    s3.download_file(bucket, key, str(tmp))
    tmp.replace(local)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


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
