"""Callback signatures and the SSRF guard."""

from __future__ import annotations

import time

import pytest

from twopass.notify.guard import CallbackURLError, check_url
from twopass.notify.signing import sign, verify

SECRET = "s3cr3t"
BODY = b'{"job_id":"abc","status":"succeeded"}'


def test_signature_round_trip() -> None:
    header = sign(SECRET, BODY)
    assert header.startswith("t=") and ",v1=" in header
    assert verify(SECRET, BODY, header)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b + b" "),  # body changed
        lambda h, b: (h.replace("v1=", "v1=0"), b),  # signature changed
        lambda h, b: (h.replace("t=", "t=1"), b),  # timestamp changed
        lambda h, b: ("garbage", b),
        lambda h, b: ("", b),
    ],
)
def test_tampering_is_detected(tamper: object) -> None:
    header, body = tamper(sign(SECRET, BODY), BODY)  # type: ignore[operator]
    assert not verify(SECRET, body, header)


def test_wrong_secret_and_old_signatures_are_refused() -> None:
    assert not verify("other", BODY, sign(SECRET, BODY))
    old = sign(SECRET, BODY, timestamp=int(time.time()) - 3600)
    assert not verify(SECRET, BODY, old)
    assert verify(SECRET, BODY, old, tolerance=7200)


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://10.0.0.5/hook",
        "https://192.168.1.1/hook",
        "https://169.254.169.254/latest/meta-data/",  # the instance metadata service
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://0.0.0.0/hook",
    ],
)
def test_private_targets_are_refused(url: str) -> None:
    with pytest.raises(CallbackURLError, match="non-public"):
        check_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://93.184.216.34/hook", "must use https"),
        ("ftp://93.184.216.34/x", "must use https"),
        ("https:///nohost", "no host"),
        ("https://user:pw@93.184.216.34/", "credentials"),
        ("https://" + "a" * 3000 + ".com/", "longer than"),
        ("https://[not-an-ip/", "not a valid URL"),
    ],
)
def test_malformed_or_insecure_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(CallbackURLError, match=message):
        check_url(url)


def test_public_https_is_allowed_and_settings_open_the_local_escape_hatch() -> None:
    assert check_url("https://93.184.216.34/hook") == "https://93.184.216.34/hook"
    assert check_url("http://127.0.0.1:9/hook", allow_private=True, allow_http=True)
