"""``make run AUTH_MODE=cognito``: a Cognito user pool, an app client and a demo user in the emulator.

moto's Cognito signs ``USER_PASSWORD_AUTH`` tokens with RS256 and serves the pool's keys at
``/<pool id>/.well-known/jwks.json``; its tokens name the real
``https://cognito-idp.<region>.amazonaws.com/<pool id>`` issuer, so the API checks them exactly as on
AWS, with the keys fetched from the emulator (``TWOPASS_JWKS_URL``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: The demo user ``make run AUTH_MODE=cognito`` creates (a local emulator's, never a real account).
DEMO_USER = "demo"
DEMO_PASSWORD = "Demo-password-1"  # noqa: S105 - the emulator's throwaway user, printed in the banner
POOL_NAME = "twopass-local-users"
CLIENT_NAME = "twopass-local-app"


@dataclass(frozen=True)
class UserPool:
    pool_id: str
    client_id: str
    region: str
    emulator_url: str

    @property
    def issuer(self) -> str:
        return f"https://cognito-idp.{self.region}.amazonaws.com/{self.pool_id}"

    @property
    def jwks_url(self) -> str:
        return f"{self.emulator_url}/{self.pool_id}/.well-known/jwks.json"

    def api_env(self) -> dict[str, str]:
        """What the API needs to check this pool's tokens."""
        return {
            "TWOPASS_AUTH_MODE": "cognito",
            "TWOPASS_JWT_ISSUER": self.issuer,
            "TWOPASS_JWT_AUDIENCE": self.client_id,
            "TWOPASS_JWKS_URL": self.jwks_url,
        }


def create_pool(client: Callable[[str], Any], emulator_url: str, region: str = "us-east-1") -> UserPool:
    """A pool whose app client allows ``USER_PASSWORD_AUTH`` (public: no secret, as apps use), with the demo user."""
    idp = client("cognito-idp")
    pool_id = idp.create_user_pool(PoolName=POOL_NAME)["UserPool"]["Id"]
    app = idp.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName=CLIENT_NAME,
        GenerateSecret=False,
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )
    pool = UserPool(pool_id, app["UserPoolClient"]["ClientId"], region, emulator_url.rstrip("/"))
    add_user(client, pool, DEMO_USER, DEMO_PASSWORD)
    return pool


def add_user(client: Callable[[str], Any], pool: UserPool, username: str, password: str) -> None:
    """A confirmed user with a permanent password (no first-sign-in challenge)."""
    idp = client("cognito-idp")
    idp.admin_create_user(UserPoolId=pool.pool_id, Username=username, MessageAction="SUPPRESS")
    idp.admin_set_user_password(UserPoolId=pool.pool_id, Username=username, Password=password, Permanent=True)


def sign_in(client: Callable[[str], Any], pool: UserPool, username: str, password: str) -> dict[str, str]:
    """The user's tokens (``IdToken``, ``AccessToken``, ``RefreshToken``), as an app's sign-in gets them."""
    answer = client("cognito-idp").initiate_auth(
        ClientId=pool.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": username, "PASSWORD": password},
    )
    tokens: dict[str, str] = answer["AuthenticationResult"]
    return tokens
