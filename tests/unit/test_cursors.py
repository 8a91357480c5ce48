"""``GET /jobs`` cursors: signed for one caller and listing; a store position only within a real range."""

from __future__ import annotations

import base64
import json
import time

import pytest

from twopass.api.cursors import CursorSigner
from twopass.jobs.base import InvalidCursorError, JobStatus, decode_cursor, encode_cursor, new_job_id

POSITION = encode_cursor("1795981285.1936235", "5e83f31594bd4aa2a4eaf215b64d8d0f")


def _position(created_at: str) -> str:
    raw = json.dumps({"t": created_at, "j": new_job_id()}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_a_sealed_cursor_opens_for_its_caller_and_listing() -> None:
    signer = CursorSigner("s3cret")
    for status in (None, JobStatus.SUCCEEDED):
        cursor = signer.seal(POSITION, "key:alice", status)
        assert cursor != POSITION and cursor.startswith(POSITION)
        assert signer.open(cursor, "key:alice", status) == POSITION
        # The same secret in another process (another Lambda instance) opens it too.
        assert CursorSigner("s3cret").open(cursor, "key:alice", status) == POSITION


def test_a_cursor_is_refused_for_another_caller_listing_or_secret() -> None:
    cursor = CursorSigner("s3cret").seal(POSITION, "key:alice", None)
    with pytest.raises(InvalidCursorError, match="another"):
        CursorSigner("s3cret").open(cursor, "key:bob", None)
    with pytest.raises(InvalidCursorError):
        CursorSigner("s3cret").open(cursor, "key:alice", JobStatus.FAILED)
    with pytest.raises(InvalidCursorError):
        CursorSigner("rotated").open(cursor, "key:alice", None)
    # Without a secret the key is fixed, and a cursor is still bound to its caller.
    unkeyed = CursorSigner("").seal(POSITION, "key:alice", None)
    assert CursorSigner("").open(unkeyed, "key:alice", None) == POSITION
    with pytest.raises(InvalidCursorError):
        CursorSigner("").open(unkeyed, "key:bob", None)


def test_an_altered_cursor_is_refused() -> None:
    signer = CursorSigner("s3cret")
    cursor = signer.seal(POSITION, "key:alice", None)
    position, tag = cursor.rsplit(".", 1)
    # Another position under the old tag (a "t" of 1e200, as a tamperer tries), a flipped tag, no tag.
    tampered = [
        f"{_position('1e200')}.{tag}",
        f"{position}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",
        position,
        f"{position}.",
        f".{tag}",
        f"{position}.!!not-base64!!",
        cursor + "x" * 300,
    ]
    for bad in tampered:
        with pytest.raises(InvalidCursorError):
            signer.open(bad, "key:alice", None)


@pytest.mark.parametrize("created_at", ["1e200", "-1", "Infinity", "in-3-days", "1" + "0" * 40])
def test_a_store_position_outside_any_creation_time_is_refused(created_at: str) -> None:
    # Test ids must not depend on the clock (pytest-xdist's processes collect at different moments).
    if created_at == "in-3-days":
        created_at = str(time.time() + 3 * 86_400)
    with pytest.raises(InvalidCursorError):
        decode_cursor(_position(created_at))


def test_a_store_position_within_range_decodes() -> None:
    now = repr(time.time())
    assert decode_cursor(_position(now))[0] == now
    assert decode_cursor(POSITION) == ("1795981285.1936235", "5e83f31594bd4aa2a4eaf215b64d8d0f")
