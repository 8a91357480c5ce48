"""``GET /jobs`` page cursors: signed, and bound to the caller and the listing that handed them out.

A store's cursor is a position in an owner's jobs (a creation time and a job id). Given back as it
is, any position would do: an altered one (``t`` of ``1e200``) or another caller's listed from where
it pointed, with a 200. The API therefore hands out the position with an HMAC-SHA256 over the
position, the owner and the status filter, keyed from ``TWOPASS_CURSOR_SECRET``, and takes back only
a cursor whose HMAC matches for this caller and this listing: anything else is a 400
``invalid_cursor``, before the store is asked.

The template generates a secret per stack (``CursorSecret``). Without one the key is a fixed one: a
cursor is still refused when altered by hand or replayed by another caller, but one who reads this
code could forge a cursor for their own listing, which moves nothing but where their own list
starts. Set the secret where that matters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from twopass.jobs.base import InvalidCursorError, JobStatus

#: Bytes of the HMAC kept in a cursor: 128 bits, far beyond guessing.
MAC_BYTES = 16
#: Longest cursor taken: a store's position is under 120 characters, the HMAC 22.
MAX_CURSOR_LENGTH = 300
#: Separates the position from its HMAC (never in a store's base64url position).
_SEPARATOR = "."


class CursorSigner:
    """Seals a store's page position for one caller and listing; opens only what it sealed for them."""

    def __init__(self, secret: str) -> None:
        # A key of its own, derived from the secret: the same secret may sign other things.
        self._key = hashlib.sha256(b"twopass/jobs-cursor\0" + secret.encode()).digest()

    def seal(self, position: str, owner: str, status: JobStatus | None) -> str:
        """The cursor a client gets for ``position`` in ``owner``'s listing of ``status`` jobs."""
        return position + _SEPARATOR + _b64(self._mac(position, owner, status))

    def open(self, cursor: str, owner: str, status: JobStatus | None) -> str:
        """The store position in ``cursor``; :class:`InvalidCursorError` unless this signer sealed it for
        this ``owner`` and ``status``."""
        position, separator, tag = cursor.rpartition(_SEPARATOR)
        if not separator or not position or len(cursor) > MAX_CURSOR_LENGTH:
            raise InvalidCursorError()
        try:
            given = base64.urlsafe_b64decode(tag + "=" * (-len(tag) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursorError() from None
        if not hmac.compare_digest(given, self._mac(position, owner, status)):
            raise InvalidCursorError(
                "the cursor is not one a previous page of this listing returned to you (altered, another "
                "caller's, or from a listing with another status filter)"
            )
        return position

    def _mac(self, position: str, owner: str, status: JobStatus | None) -> bytes:
        # Length-prefixed fields: no two (position, owner, status) triples give the same message.
        fields = (position, owner, status.value if status is not None else "")
        message = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in fields)
        return hmac.new(self._key, message, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")
