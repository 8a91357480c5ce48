"""Server-side request forgery guard for callback URLs.

Only ``https`` to public addresses by default. Private, loopback, link-local (the instance metadata
service lives there), multicast and reserved addresses are refused unless a setting allows them
(the local stack does, so its tests can run a receiver on 127.0.0.1). The check runs when the job is
submitted and again, on fresh DNS answers, right before each delivery.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from twopass.exceptions import TwopassError

MAX_URL_LENGTH = 2048


class CallbackURLError(TwopassError):
    """The callback URL is malformed or points somewhere twopass will not call."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_url(url: str, *, allow_private: bool = False, allow_http: bool = False, resolve: bool = True) -> str:
    """Return ``url`` if twopass may POST to it, else raise :class:`CallbackURLError` saying why."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackURLError(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackURLError(f"callback_url is not a valid URL: {exc}") from None
    allowed = {"https", "http"} if allow_http else {"https"}
    if parts.scheme not in allowed:
        raise CallbackURLError(
            f"callback_url must use {' or '.join(sorted(allowed))}, not {parts.scheme or 'nothing'!r}"
        )
    if not parts.hostname:
        raise CallbackURLError("callback_url has no host")
    if parts.username or parts.password:
        raise CallbackURLError("callback_url must not carry credentials")
    if allow_private or not resolve:
        return url
    try:
        infos = socket.getaddrinfo(
            parts.hostname, port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise CallbackURLError(f"callback_url host {parts.hostname!r} does not resolve: {exc}") from None
    blocked = sorted({str(info[4][0]) for info in infos if not _is_public(str(info[4][0]))})
    if blocked:
        raise CallbackURLError(f"callback_url host {parts.hostname!r} resolves to non-public address(es) {blocked}")
    return url
