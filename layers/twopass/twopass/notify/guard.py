"""Server-side request forgery guard for callback URLs.

Only ``https`` to public addresses by default. Private, loopback, link-local (the instance metadata
service lives there), shared (CGNAT), multicast and reserved addresses are refused unless a setting
allows them (the local stack does, so its tests can run a receiver on 127.0.0.1).

IPv6 forms that carry an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``,
SIIT ``::ffff:0:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo ``2001::/32``) are judged by
the IPv4 address inside too: ``64:ff9b::7f00:1`` is a route to 127.0.0.1 wherever a NAT64 gateway
runs. The local-use NAT64 prefix ``64:ff9b:1::/48`` is refused outright (it is never global).

The check runs when the job is submitted (:func:`check_url`) and again at connection time
(:func:`resolve_public`, used by :class:`twopass.notify.transport.PinnedTransport`), where the
addresses checked are the addresses connected to: one lookup, no second answer for DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

from twopass.exceptions import TwopassError

MAX_URL_LENGTH = 2048

#: ``resolver(host, port)`` → the host's addresses as strings, in the order to try them.
Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")


class CallbackURLError(TwopassError):
    """The callback URL is malformed or points somewhere twopass will not call."""


class CallbackResolutionError(CallbackURLError):
    """The callback host did not resolve (possibly a passing DNS failure: worth another try)."""


def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for ``host``, de-duplicated, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address stands for (empty for plain IPv6)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)  # (server, client): both are hops the packets go through
    if ip in _IPV4_COMPATIBLE or ip in _SIIT or ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def is_public(address: str | IPAddress) -> bool:
    """Whether ``address`` and every IPv4 address embedded in it is globally routable unicast."""
    ip = ipaddress.ip_address(address.split("%", 1)[0] if isinstance(address, str) else address)
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        candidates += embedded_ipv4(ip)
    return all(c.is_global and not c.is_multicast for c in candidates)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve_public(host: str, port: int, *, allow_private: bool = False, resolver: Resolver | None = None) -> list[str]:
    """Resolve ``host`` once and return its addresses, every one of them public unless ``allow_private``.

    Raises :class:`CallbackResolutionError` when the name does not resolve and :class:`CallbackURLError`
    when any answer is not public (one bad answer among good ones is a rebinding attempt as often as not).
    """
    literal = _literal(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = list((resolver or system_resolver)(host, port))
        except (OSError, UnicodeError) as exc:
            raise CallbackResolutionError(f"callback_url host {host!r} does not resolve: {exc}") from None
        if not addresses:
            raise CallbackResolutionError(f"callback_url host {host!r} does not resolve")
    if not allow_private:
        try:
            blocked = sorted({a for a in addresses if not is_public(a)})
        except ValueError:
            raise CallbackURLError(f"callback_url host {host!r} resolves to something not an IP address") from None
        if blocked:
            raise CallbackURLError(f"callback_url host {host!r} resolves to non-public address(es) {blocked}")
    return addresses


def check_url(
    url: str,
    *,
    allow_private: bool = False,
    allow_http: bool = False,
    resolve: bool = True,
    resolver: Resolver | None = None,
) -> str:
    """Return ``url`` if twopass may POST to it, else raise :class:`CallbackURLError` saying why.

    ``resolve=False`` checks the URL's form only (the connection-time check does the rest).
    """
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
    resolve_public(
        parts.hostname, port or (443 if parts.scheme == "https" else 80), allow_private=False, resolver=resolver
    )
    return url
