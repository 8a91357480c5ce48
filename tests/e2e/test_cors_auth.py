"""Browser pages and signed-in users over real HTTP.

CORS on the shared local stack (API keys): preflights need no key, allowed origins (localhost and
127.0.0.1 on any port, by default locally) get the headers on every answer, errors included, and
other origins get none. User tokens on a stack of its own with ``AuthMode`` cognito: the emulator's
Cognito signs users in; the API checks their tokens against the pool's keys (JWKS) and makes each
user the owner of their jobs.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from moto.utilities.utils import load_resource

from tests.e2e.browser import chromium, chromium_path
from twopass.local.cognito import DEMO_PASSWORD, DEMO_USER, UserPool, add_user, create_pool, sign_in
from twopass.local.stack import LocalStack, free_port

pytestmark = pytest.mark.e2e

PHOTO = Path(__file__).resolve().parents[1] / "data" / "chelsea.jpg"
CAT = PHOTO.read_bytes()
DEV_SERVER = "http://localhost:5173"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key, content-type"}


# ---------------------------------------------------------------- CORS (API keys)


@pytest.mark.parametrize("origin", [DEV_SERVER, "http://127.0.0.1:8080", "http://localhost"])
def test_preflight_from_a_local_dev_server_needs_no_key(stack: LocalStack, origin: str) -> None:
    headers = {
        **PREFLIGHT,
        "Origin": origin,
        "Access-Control-Request-Headers": "x-api-key, authorization, idempotency-key",
    }
    answer = httpx.options(f"{stack.api_url}/predict", headers=headers)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == origin
    allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"x-api-key", "authorization", "idempotency-key", "content-type"} <= allowed
    assert "POST" in answer.headers["access-control-allow-methods"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example:3000", "null"])
def test_other_origins_are_refused(stack: LocalStack, origin: str) -> None:
    preflight = httpx.options(f"{stack.api_url}/predict", headers={**PREFLIGHT, "Origin": origin})
    assert preflight.status_code == 403
    assert preflight.json()["error"] == "cors_origin_refused"
    assert "access-control-allow-origin" not in preflight.headers
    # The request itself still runs for non-browser callers, but a browser gets nothing it may read.
    actual = httpx.get(f"{stack.api_url}/health", headers={"Origin": origin})
    assert actual.status_code == 200 and "access-control-allow-origin" not in actual.headers


def test_a_header_the_api_does_not_take_is_refused_in_the_preflight(stack: LocalStack) -> None:
    headers = {**PREFLIGHT, "Origin": DEV_SERVER, "Access-Control-Request-Headers": "x-api-key, x-secret-admin"}
    answer = httpx.options(f"{stack.api_url}/predict", headers=headers)
    assert answer.status_code == 403 and "x-secret-admin" in answer.json()["detail"]


def test_answers_and_errors_carry_the_cors_headers(stack: LocalStack) -> None:
    key = {"x-api-key": stack.api_keys[0], "Origin": DEV_SERVER}
    with httpx.Client(base_url=stack.api_url, timeout=30) as client:
        ok = client.post(
            "/predict",
            content=CAT,
            headers={**key, "Content-Type": "image/jpeg", "Idempotency-Key": f"cors-{time.time()}"},
        )
        replay = client.post(
            "/predict",
            content=CAT,
            headers={**key, "Content-Type": "image/jpeg", "Idempotency-Key": ok.request.headers["Idempotency-Key"]},
        )
        errors = [
            client.get("/job/" + "0" * 32, headers=key),  # 404
            client.get("/jobs", headers={"Origin": DEV_SERVER}),  # 403: no key
            client.post("/predict", content=b"not an image", headers={**key, "Content-Type": "image/jpeg"}),  # 400
        ]
    assert ok.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert [e.status_code for e in errors] == [404, 403, 400]
    for answer in [ok, replay, *errors]:
        assert answer.headers["access-control-allow-origin"] == DEV_SERVER
        exposed = {h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")}
        assert {"retry-after", "idempotent-replayed"} <= exposed
        assert "origin" in answer.headers["vary"].lower()


# ---------------------------------------------------------------- user tokens (AuthMode cognito)


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack whose API requires Cognito user tokens (no API key), with no worker: jobs stay queued."""
    with LocalStack(
        api_port=free_port(),
        emulator_port=free_port(),
        workers=0,
        api_key=None,
        auth_mode="cognito",
        log_dir=tmp_path_factory.mktemp("cognito-stack-logs"),
    ) as local:
        assert local.user_pool is not None
        add_user(local.client, local.user_pool, "bob", "Bob-password-1")
        yield local


def _pool(stack: LocalStack) -> UserPool:
    assert stack.user_pool is not None
    return stack.user_pool


def _call(
    stack: LocalStack, method: str, path: str, token: str | None, bearer: bool = True, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}" if bearer else token} if token else {}
    return httpx.request(method, stack.api_url + path, headers={**headers, **kw.pop("headers", {})}, timeout=30, **kw)


def _predict(stack: LocalStack, token: str) -> str:
    answer = _call(stack, "POST", "/predict", token, content=CAT, headers={"Content-Type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    job_id: str = answer.json()["job_id"]
    return job_id


def _moto_signed(claims: dict[str, Any]) -> str:
    """A token signed with the emulator's own Cognito key (moto signs every pool's tokens with it)."""
    key = load_resource("cognitoidp/resources/jwks-private.json")
    return jwt.encode(claims, jwt.PyJWK(key).key, algorithm="RS256", headers={"kid": key["kid"]})


def test_each_signed_in_user_sees_only_their_own_jobs(users: LocalStack) -> None:
    pool = _pool(users)
    alice = sign_in(users.client, pool, DEMO_USER, DEMO_PASSWORD)
    bob = sign_in(users.client, pool, "bob", "Bob-password-1")
    job_id = _predict(users, alice["IdToken"])
    assert _call(users, "GET", f"/job/{job_id}", alice["IdToken"]).json()["status"] == "queued"
    # The access token is the same user; the bare token (no "Bearer") is accepted too, as API Gateway does.
    assert _call(users, "GET", f"/job/{job_id}", alice["AccessToken"]).status_code == 200
    assert _call(users, "GET", f"/job/{job_id}", alice["IdToken"], bearer=False).status_code == 200
    theirs = _call(users, "GET", f"/job/{job_id}", bob["IdToken"])
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    assert _call(users, "DELETE", f"/job/{job_id}", bob["IdToken"]).status_code == 404
    assert job_id not in {j["job_id"] for j in _call(users, "GET", "/jobs", bob["IdToken"]).json()["jobs"]}
    assert job_id in {j["job_id"] for j in _call(users, "GET", "/jobs", alice["IdToken"]).json()["jobs"]}


def test_no_token_is_a_401_that_says_so(users: LocalStack) -> None:
    answer = _call(users, "GET", "/jobs", None)
    assert answer.status_code == 401 and answer.json()["error"] == "missing_token"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    # /health stays open, and a browser's preflight needs no token.
    assert _call(users, "GET", "/health", None).status_code == 200
    preflight = httpx.options(
        f"{users.api_url}/jobs",
        headers={
            "Origin": DEV_SERVER,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == DEV_SERVER


def test_an_expired_token_is_refused(users: LocalStack) -> None:
    pool = _pool(users)
    token = sign_in(users.client, pool, DEMO_USER, DEMO_PASSWORD)["IdToken"]
    claims = jwt.decode(token, options={"verify_signature": False})
    expired = _moto_signed({**claims, "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})
    answer = _call(users, "GET", "/jobs", expired)
    assert answer.status_code == 401 and answer.json()["error"] == "token_expired"
    # The same claims with a live expiry and the same key pass: it is the expiry that was refused.
    assert _call(users, "GET", "/jobs", _moto_signed({**claims, "exp": int(time.time()) + 600})).status_code == 200


def test_a_token_for_another_app_client_is_refused(users: LocalStack) -> None:
    pool = _pool(users)
    other = users.client("cognito-idp").create_user_pool_client(
        UserPoolId=pool.pool_id, ClientName="another-app", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"]
    )["UserPoolClient"]["ClientId"]
    elsewhere = UserPool(pool.pool_id, other, pool.region, pool.emulator_url)
    tokens = sign_in(users.client, elsewhere, DEMO_USER, DEMO_PASSWORD)
    for token in (tokens["IdToken"], tokens["AccessToken"]):
        answer = _call(users, "GET", "/jobs", token)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_audience", answer.text


def test_a_token_of_another_pool_is_refused(users: LocalStack) -> None:
    other = create_pool(users.client, users.endpoint_url)
    token = sign_in(users.client, other, DEMO_USER, DEMO_PASSWORD)["IdToken"]
    answer = _call(users, "GET", "/jobs", token)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_token"
    assert "not from" in answer.json()["detail"]


def test_a_tampered_token_is_refused(users: LocalStack) -> None:
    pool = _pool(users)
    alice = sign_in(users.client, pool, DEMO_USER, DEMO_PASSWORD)["IdToken"]
    bob_sub = jwt.decode(
        sign_in(users.client, pool, "bob", "Bob-password-1")["IdToken"], options={"verify_signature": False}
    )["sub"]
    head, body, signature = alice.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "sub": bob_sub}).encode()).rstrip(b"=").decode()
    for token in (
        f"{head}.{forged}.{signature}",
        alice[:-4] + ("AAAA" if not alice.endswith("AAAA") else "BBBB"),
        "not-a-jwt",
    ):
        answer = _call(users, "GET", "/jobs", token)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_token", answer.text


@pytest.mark.skipif(chromium_path() is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_the_demo_page_signs_a_user_in_and_their_photo_becomes_their_job(users: LocalStack) -> None:
    """In a real browser: sign in on /demo (Cognito's InitiateAuth at the emulator), submit a photo,
    see the fast label; the job is the signed-in user's and no one else's."""
    with chromium() as page:
        page.goto(f"{users.api_url}/demo")
        page.wait_for("document.documentElement.dataset.ready === 'true' && !document.querySelector('#sign-in').hidden")
        page.js(f"document.querySelector('#username').value = {json.dumps(DEMO_USER)}")
        page.js(f"document.querySelector('#password').value = {json.dumps(DEMO_PASSWORD)}")
        page.js("document.querySelector('#sign-in button').click()")
        outcome = page.wait_for(
            "document.querySelector('#who').textContent.includes('Signed in') ? 'signed in'"
            " : document.querySelector('#error').hidden ? null : document.querySelector('#error').textContent"
        )
        assert outcome == "signed in", (outcome, page.console_errors)
        page.set_files("#photo", [PHOTO])
        assert page.wait_for("document.querySelector('#fast-label').textContent.trim()", timeout=30)
        job_id = page.wait_for("document.querySelector('#job-id').textContent.trim()")
        assert page.console_errors == []
    alice = sign_in(users.client, _pool(users), DEMO_USER, DEMO_PASSWORD)["IdToken"]
    bob = sign_in(users.client, _pool(users), "bob", "Bob-password-1")["IdToken"]
    assert _call(users, "GET", f"/job/{job_id}", alice).status_code == 200
    assert _call(users, "GET", f"/job/{job_id}", bob).status_code == 404
