"""Who is calling: the API key check or the user's token, and the job owner it yields.

``TWOPASS_AUTH_MODE=apikey`` (the default): on AWS, API Gateway's usage plan checks ``x-api-key``
before the function runs and puts the key's id in the request context; the owner is that id. Where
the app checks keys itself (the local stack, ``sam local``), the owner is a hash of the key, so each
key is a tenant of its own. With no keys configured every caller is the one anonymous owner.

``cognito`` or ``jwt``: the owner is the subject of the signed-in user's token (``Authorization:
Bearer <JWT>``), so each user sees only their own jobs. Where API Gateway's Cognito authorizer
checked the token, its claims are in the request context; elsewhere (the local stack, ``sam local``,
a REST API with an OIDC issuer, which has no JWT authorizer) the app checks it itself, as the
authorizer does: signature against the issuer's keys (JWKS), expiry, issuer, audience or client id.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from twopass.api.context import ApiContext, Context
from twopass.api.errors import HTTPProblemError
from twopass.config import Settings
from twopass.exceptions import ConfigError, DependencyError
from twopass.jobs.base import ANONYMOUS

TOKEN_MODES = frozenset({"cognito", "jwt"})
#: Signature algorithms accepted; the key from the issuer's JWKS must match the one a token names.
ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512")
#: Clock skew tolerated on ``exp``/``nbf``/``iat`` between the issuer and this host, in seconds.
LEEWAY_SECONDS = 5

#: Declared as a security scheme so ``/docs`` offers "Authorize" and sends the key on "Try it out".
api_key_header = APIKeyHeader(
    name="x-api-key",
    auto_error=False,
    description="The API key (on AWS, from the usage plan; locally, one of TWOPASS_API_KEYS).",
)
#: AuthMode cognito|jwt: the user's token, as ``/docs`` declares it (see :func:`twopass.api.docs.declare_user_token`);
#: read by :func:`bearer_token`, which also takes a bare token, as API Gateway's authorizers do.
USER_TOKEN_SCHEME: dict[str, str] = {
    "type": "http",
    "scheme": "bearer",
    "bearerFormat": "JWT",
    "description": "AuthMode cognito|jwt: the signed-in user's token (a Cognito ID or access token, or a JWT).",
}


def _gateway_key_id(request: Request) -> str | None:
    event: dict[str, Any] = request.scope.get("aws.event") or {}
    identity = (event.get("requestContext") or {}).get("identity") or {}
    key_id = identity.get("apiKeyId")
    return str(key_id) if key_id else None


def key_owner(key: str) -> str:
    """The owner id of a key the app checks itself (never the key: it is stored on every job)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]


async def caller(
    context: Context,
    request: Request,
    key: Annotated[str | None, Security(api_key_header)],
) -> str:
    """The caller's owner id, after checking its key when the app is configured with keys, and its
    token in the token modes.

    Async to stay off the thread pool (see :func:`~twopass.api.context.get_context`); a token check
    that may fetch the issuer's keys runs on the I/O pool.
    """
    if context.settings.auth_mode in TOKEN_MODES:
        _check_key(context, key)
        return await _token_owner(context, request)
    return _key_owner(context, request, key)


def _check_key(context: ApiContext, key: str | None) -> None:
    keys = context.settings.api_key_set
    if keys:
        given = (key or "").encode()
        if not any(hmac.compare_digest(given, k.encode()) for k in keys):
            raise HTTPProblemError(403, "forbidden", "missing or invalid x-api-key header")


def _key_owner(context: ApiContext, request: Request, key: str | None) -> str:
    if context.settings.api_key_set:
        _check_key(context, key)
        return key_owner(key or "")
    key_id = _gateway_key_id(request)
    return f"apikey:{key_id}" if key_id else ANONYMOUS


def bearer_token(request: Request) -> str | None:
    """The token in ``Authorization``: ``Bearer <JWT>``, or the bare token."""
    value = request.headers.get("authorization", "").strip()
    scheme, _, rest = value.partition(" ")
    token = rest.strip() if scheme.lower() == "bearer" else value
    return token or None


def _authorizer_subject(request: Request) -> str | None:
    """The subject API Gateway's Cognito authorizer put in the request context (only it can set it)."""
    event: dict[str, Any] = request.scope.get("aws.event") or {}
    authorizer = (event.get("requestContext") or {}).get("authorizer") or {}
    claims = authorizer.get("claims") or (authorizer.get("jwt") or {}).get("claims") or {}
    sub = claims.get("sub")
    return str(sub) if sub else None


async def _token_owner(context: ApiContext, request: Request) -> str:
    subject = _authorizer_subject(request)
    if subject is None:
        token = bearer_token(request)
        if token is None:
            raise _unauthorized("missing_token", "send the signed-in user's token: Authorization: Bearer <JWT>")
        subject = await context.io(verifier(context.settings), token)
    return "user:" + subject


def _unauthorized(code: str, detail: str) -> HTTPProblemError:
    quoted = detail.replace('"', "'").replace("\\", "/")  # a quoted-string of RFC 6750's challenge
    return HTTPProblemError(
        401, code, detail, {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{quoted}"'}
    )


def verifier(settings: Settings) -> TokenVerifier:
    """The verifier for ``settings``' issuer (one per process: it caches the issuer's keys)."""
    audiences = tuple(sorted(a.strip() for a in settings.jwt_audience.split(",") if a.strip()))
    # The issuer as configured: ``iss`` must equal it exactly (some issuers end theirs with "/").
    return _verifier(settings.auth_mode, settings.jwt_issuer, audiences, settings.jwks_url)


@functools.cache
def _verifier(mode: str, issuer: str, audiences: tuple[str, ...], jwks_url: str) -> TokenVerifier:
    return TokenVerifier(mode, issuer, audiences, jwks_url or f"{issuer.rstrip('/')}/.well-known/jwks.json")


class TokenVerifier:
    """Checks a user token as API Gateway's authorizers do; :meth:`__call__` gives its subject.

    The issuer's keys are fetched once and kept for an hour; a token signed with a key not seen yet
    fetches them again (the issuer rotated its keys), at most every 30 s.
    """

    def __init__(self, mode: str, issuer: str, audiences: tuple[str, ...], jwks_url: str) -> None:
        if not issuer or not audiences:
            raise ConfigError(f"TWOPASS_AUTH_MODE={mode} needs TWOPASS_JWT_ISSUER and TWOPASS_JWT_AUDIENCE")
        self.mode, self.issuer, self.audiences = mode, issuer, frozenset(audiences)
        import jwt  # here, not at the top: the API-key mode (and its cold start) never needs it

        self.keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=3600, timeout=5)

    def __call__(self, token: str) -> str:
        """The token's subject; 401 when it is not a valid token of this issuer for this app."""
        import jwt

        try:
            key = self.keys.get_signing_key_from_jwt(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=list(ALGORITHMS),
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                # The audience is checked below: a Cognito access token names its app client in client_id.
                options={"verify_aud": False, "require": ["exp", "iss", "sub"]},
            )
        except jwt.PyJWKClientConnectionError as exc:
            raise DependencyError(f"the token issuer's keys are unavailable: {exc}") from exc
        except jwt.ExpiredSignatureError as exc:
            raise _unauthorized("token_expired", "the token has expired: sign in again") from exc
        except jwt.InvalidIssuerError as exc:
            raise _unauthorized("invalid_token", f"the token is not from {self.issuer}") from exc
        except (jwt.PyJWTError, jwt.PyJWKClientError) as exc:
            raise _unauthorized("invalid_token", f"the token is not valid: {exc}") from exc
        self._check_audience(claims)
        return str(claims["sub"])

    def _check_audience(self, claims: dict[str, Any]) -> None:
        use = claims.get("token_use")
        if self.mode == "cognito" and use not in ("id", "access"):
            raise _unauthorized("invalid_token", "not a Cognito ID or access token")
        aud = claims.get("aud")
        named = {aud} if isinstance(aud, str) else set(aud or [])
        if use == "access" and self.mode == "cognito":
            named = {str(claims.get("client_id", ""))}
        if not named & self.audiences:
            raise _unauthorized("invalid_audience", "the token was issued for another app (audience / client id)")


Owner = Annotated[str, Depends(caller)]
