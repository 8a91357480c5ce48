"""Completion callbacks: a signed POST to the client's URL when its job reaches a final state."""

from twopass.notify.signing import SIGNATURE_HEADER, sign, verify

__all__ = ["SIGNATURE_HEADER", "sign", "verify"]
