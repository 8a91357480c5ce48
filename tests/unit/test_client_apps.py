"""Client apps without servers: which origins CORS allows, how a user token is checked (keys from a
JWKS file, so no issuer runs), the demo page's switch and headers, and the token scheme in the schema.
The same behaviour over real HTTP and a real browser: tests/e2e/test_cors_auth.py and test_browser.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi.testclient import TestClient

from twopass.api.app import create_app
from twopass.api.auth import TokenVerifier
from twopass.api.cors import LOCAL_ORIGINS, OriginPolicy
from twopass.api.errors import HTTPProblemError
from twopass.api.routes.demo import cognito_endpoint
from twopass.config import Settings

ISSUER = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Test"
CLIENT_ID = "app-client-1"


# ---------------------------------------------------------------- CORS origins


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:5173", True),
        ("http://127.0.0.1:8080", True),
        ("http://localhost", True),
        ("HTTP://LOCALHOST:3000", True),
        ("https://localhost:5173", False),  # another scheme is another origin
        ("http://localhost.evil.example:3000", False),
        ("http://evil.example/http://localhost:1", False),
        ("http://localhost:5173.evil.example", False),
        ("http://127.0.0.2:8080", False),
        ("null", False),
    ],
)
def test_local_origins(origin: str, allowed: bool) -> None:
    assert OriginPolicy.parse(LOCAL_ORIGINS).allows(origin) is allowed


def test_exact_origins_any_origin_and_none() -> None:
    policy = OriginPolicy.parse(" https://app.example.com/ , https://admin.example.com")
    assert policy.allows("https://app.example.com") and policy.allows("https://admin.example.com")
    assert not policy.allows("https://app.example.com:8443") and not policy.allows("http://app.example.com")
    assert OriginPolicy.parse("*").allows("https://anything.example")
    assert not OriginPolicy.parse("") and not OriginPolicy.parse("").allows("http://localhost:1")


# ---------------------------------------------------------------- tokens


@pytest.fixture(scope="module")
def signing_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def verifier(signing_key: rsa.RSAPrivateKey) -> Iterator[TokenVerifier]:
    """A verifier whose issuer's keys are served by a JWKS endpoint on loopback."""
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(signing_key.public_key()))
    body = json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}).encode()

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield TokenVerifier("cognito", ISSUER, (CLIENT_ID,), f"http://127.0.0.1:{server.server_address[1]}/jwks.json")
    finally:
        server.shutdown()
        server.server_close()


def _token(key: Any, algorithm: str = "RS256", kid: str = "k1", **changes: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "user-1", "aud": CLIENT_ID, "token_use": "id", "iat": now, "exp": now + 600}
    claims.update(changes)
    return jwt.encode(
        {k: v for k, v in claims.items() if v is not None}, key, algorithm=algorithm, headers={"kid": kid}
    )


def _refused(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(HTTPProblemError) as caught:
        verifier(token)
    assert caught.value.status == 401
    return caught.value.code


def test_a_valid_id_or_access_token_gives_its_subject(verifier: TokenVerifier, signing_key: Any) -> None:
    assert verifier(_token(signing_key)) == "user-1"
    access = _token(signing_key, aud=None, token_use="access", client_id=CLIENT_ID, sub="user-2")
    assert verifier(access) == "user-2"


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"exp": int(time.time()) - 60}, "token_expired"),
        ({"iss": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Other"}, "invalid_token"),
        ({"aud": "another-app"}, "invalid_audience"),
        ({"aud": None, "token_use": "access", "client_id": "another-app"}, "invalid_audience"),
        ({"token_use": None}, "invalid_token"),
        ({"sub": None}, "invalid_token"),
        ({"exp": None}, "invalid_token"),
    ],
)
def test_tokens_the_authorizer_would_refuse_are_401(
    verifier: TokenVerifier, signing_key: Any, changes: dict[str, Any], code: str
) -> None:
    assert _refused(verifier, _token(signing_key, **changes)) == code


def test_forged_signatures_are_refused(verifier: TokenVerifier, signing_key: Any) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _refused(verifier, _token(stranger)) == "invalid_token"  # same kid, another key
    assert _refused(verifier, _token(signing_key, kid="unknown")) == "invalid_token"
    # Algorithm confusion: the public key used as an HMAC secret, and an unsigned token.
    pem = signing_key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    good = _token(signing_key)
    claims = good.split(".")[1]
    for alg in ("HS256", "none"):
        head = _b64(json.dumps({"alg": alg, "kid": "k1", "typ": "JWT"}).encode())
        signature = _b64(hmac.new(pem, f"{head}.{claims}".encode(), hashlib.sha256).digest()) if alg != "none" else ""
        assert _refused(verifier, f"{head}.{claims}.{signature}") == "invalid_token", alg


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_mode_needs_an_issuer_and_an_audience() -> None:
    from twopass.exceptions import ConfigError

    with pytest.raises(ConfigError, match="TWOPASS_JWT_ISSUER"):
        TokenVerifier("jwt", "", (), "")


# ---------------------------------------------------------------- the demo page and the schema


def _app(**settings: Any) -> TestClient:
    return TestClient(create_app(settings=Settings(**settings)), raise_server_exceptions=False)


def test_the_demo_page_is_off_unless_switched_on() -> None:
    assert _app().get("/demo").status_code == 404
    assert _app().get("/demo/twopass.js").status_code == 404
    client = _app(demo=True, api_keys="k")
    page = client.get("/demo")  # no key: the page is static, its calls carry the key
    assert page.status_code == 200 and "<title>" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("demo.js", "demo.css", "twopass.js"):
        assert client.get(f"/demo/{name}").status_code == 200, name
    assert client.get("/demo/..%2Fauth.py").status_code == 404
    assert client.get("/demo/config.json").json() == {"auth_mode": "apikey", "api_key": True}


def test_the_demo_signs_users_in_at_the_pool_s_endpoint() -> None:
    jwks = "http://127.0.0.1:4566/us-east-1_abc/.well-known/jwks.json"
    client = _app(demo=True, auth_mode="cognito", jwt_issuer=ISSUER, jwt_audience=CLIENT_ID, jwks_url=jwks)
    config = client.get("/demo/config.json").json()
    assert config["cognito"] == {"endpoint": "http://127.0.0.1:4566/", "client_id": CLIENT_ID}
    assert "http://127.0.0.1:4566/" in client.get("/demo").headers["content-security-policy"]
    assert cognito_endpoint(ISSUER, "") == "https://cognito-idp.eu-west-1.amazonaws.com/"


def test_token_modes_declare_the_user_token_in_the_schema() -> None:
    keyed = _app().get("/openapi.json").json()
    assert set(keyed["components"]["securitySchemes"]) == {"APIKeyHeader"}
    tokens = _app(auth_mode="jwt", jwt_issuer=ISSUER, jwt_audience=CLIENT_ID).get("/openapi.json").json()
    assert tokens["components"]["securitySchemes"]["UserToken"]["scheme"] == "bearer"
    assert tokens["paths"]["/jobs"]["get"]["security"] == [{"APIKeyHeader": [], "UserToken": []}]


def test_the_packaged_client_is_the_npm_package_s() -> None:
    root = Path(__file__).resolve().parents[2]
    packaged = root / "layers" / "twopass" / "twopass" / "api" / "static" / "twopass.js"
    assert packaged.read_bytes() == (root / "clients" / "js" / "src" / "index.js").read_bytes()


def test_an_issuer_ending_in_a_slash_is_checked_as_written() -> None:
    """Some issuers (Auth0) end ``iss`` with "/": it must match exactly, and the keys sit below it."""
    from twopass.api.auth import verifier as verifier_for

    checker = verifier_for(Settings(auth_mode="jwt", jwt_issuer="https://login.example/", jwt_audience="api"))
    assert checker.issuer == "https://login.example/"
    assert checker.keys.uri == "https://login.example/.well-known/jwks.json"
