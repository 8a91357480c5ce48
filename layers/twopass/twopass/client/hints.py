"""What to do about an error, in words: the sentences the SDK's exceptions and the CLI's messages end with.

One module so the SDK and the CLI give the same advice; they differ only in how a user sets the URL
and the key (``base_url=`` / ``--url``, ``api_key=`` / ``--api-key``), which :class:`HintStyle` names.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

#: The key ``make run`` (``python -m twopass.local``) requires unless told otherwise; the same value as
#: ``twopass.local.stack.DEFAULT_API_KEY``, which the client must not import (it needs the server extras).
LOCAL_API_KEY: Final = "local-dev-key"
#: Where ``make run`` serves; the CLI's and the SDK's default URL.
LOCAL_URL: Final = "http://127.0.0.1:3000"
#: What a base URL looks like, for the "check the URL" advice.
URL_EXAMPLES: Final = f"{LOCAL_URL} locally, https://<api-id>.execute-api.<region>.amazonaws.com/Prod on AWS"
#: API Gateway's answer for a path (or stage) it has no route for: a wrong URL, not a wrong key.
GATEWAY_NO_ROUTE: Final = "Missing Authentication Token"


@dataclass(frozen=True, slots=True)
class HintStyle:
    """How the reader of a message sets the base URL and the API key."""

    url: str
    api_key: str


#: Advice for SDK users (``Client(base_url, api_key=...)``).
SDK: Final = HintStyle(url="base_url", api_key="api_key=")
#: Advice for the ``twopass`` command.
CLI: Final = HintStyle(url="--url", api_key="--api-key")


def is_loopback(url: str) -> bool:
    """True when ``url`` points at this machine, where ``make run`` serves."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(style: HintStyle) -> str:
    return f"check {style.url} (or TWOPASS_URL): it is the API's root, e.g. {URL_EXAMPLES}"


def not_twopass(style: HintStyle, base_url: str, got: str) -> str:
    """The whole message for an answer that did not come from a twopass API."""
    return f"the server at {base_url} does not look like a twopass API (got {got}); {check_url(style)}"


def authentication(style: HintStyle, base_url: str, *, key_sent: bool) -> str:
    """What to do about a 401/403: send a key, or send the right one."""
    if key_sent:
        hint = f"the API key was refused: check {style.api_key} (or TWOPASS_API_KEY)"
    else:
        hint = f"no API key was sent: pass {style.api_key} or set TWOPASS_API_KEY"
    if is_loopback(base_url):
        hint += f" (the local stack started by `make run` takes {LOCAL_API_KEY})"
    return hint


def unreachable(style: HintStyle, base_url: str) -> str:
    """What to do when nothing answers at ``base_url``."""
    if is_loopback(base_url):
        return (
            f"is the local stack running? `make run` starts it on {LOCAL_URL}; else check {style.url} (or TWOPASS_URL)"
        )
    return f"check {style.url} (or TWOPASS_URL) and the network"


def foreign_gateway_error(style: HintStyle, base_url: str) -> str:
    """A 429/5xx whose body is not twopass's JSON: a proxy's page, or another server entirely."""
    return f"the answer is not twopass's JSON: if this persists, {check_url(style)} (now {base_url})"
