"""Client apps in the transformed template: CORS (preflights without a key, the function told the
origins, gateway errors readable), AuthMode (the Cognito pool, app client and authorizer only in
``cognito`` mode; the function told how to check tokens), and the demo page's routes."""

from __future__ import annotations

from functools import cache
from typing import Any

import pytest

from twopass.local import template as tpl

COGNITO = {"AuthMode": "cognito", "CorsAllowOrigins": "https://app.example.com,http://localhost:*", "DemoPage": "true"}
KEYED_ROUTES = [
    ("/predict", "post"),
    ("/job/{job_id}", "get"),
    ("/jobs", "get"),
    ("/batches", "post"),
    ("/uploads", "post"),
]


@cache
def _cfn(items: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    return tpl.transform(tpl.load(), dict(items))


def _resolved(parameters: dict[str, str]) -> dict[str, Any]:
    """The transformed template with its parameters and conditions applied (resources by placeholder)."""
    cfn = _cfn(tuple(sorted(parameters.items())))
    defaults = {k: str(v.get("Default", "")) for k, v in cfn["Parameters"].items()}
    values = {**defaults, **parameters, "AWS::Region": "eu-west-1", "AWS::StackName": "twopass"}

    def lookup(logical: str, attribute: str | None) -> str:
        return f"<{logical}{'.' + attribute if attribute else ''}>"

    resources = {
        k: v
        for k, v in cfn["Resources"].items()
        if "Condition" not in v or tpl.condition(v["Condition"], cfn["Conditions"], values)
    }
    resolved: dict[str, Any] = tpl.resolve(resources, lookup, values, cfn["Conditions"])
    return _drop_no_value(resolved)


def _drop_no_value(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _drop_no_value(v) for k, v in node.items() if v != "<AWS::NoValue>"}
    if isinstance(node, list):
        return [_drop_no_value(v) for v in node if v != "<AWS::NoValue>"]
    return node


def _body(resources: dict[str, Any]) -> dict[str, Any]:
    (api,) = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::RestApi"]
    body: dict[str, Any] = api["Properties"]["Body"]
    return body


def _env(resources: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = resources["ApiFunction"]["Properties"]["Environment"]["Variables"]
    return env


@pytest.mark.parametrize("parameters", [{}, COGNITO], ids=["defaults", "cognito"])
def test_preflights_need_no_key_or_token(parameters: dict[str, str]) -> None:
    paths = _body(_resolved(parameters))["paths"]
    for path, _ in KEYED_ROUTES:
        options = paths[path]["options"]
        assert options.get("security", []) == [], path
        assert options["x-amazon-apigateway-integration"]["type"] == "mock"
    allow = paths["/predict"]["options"]["x-amazon-apigateway-integration"]["responses"]["default"][
        "responseParameters"
    ]
    assert allow["method.response.header.Access-Control-Allow-Origin"] == ("'*'" if parameters else "'null'")
    for header in ("x-api-key", "authorization", "idempotency-key"):
        assert header in allow["method.response.header.Access-Control-Allow-Headers"]


def test_the_default_is_api_keys_no_pool_and_no_cors() -> None:
    resources = _resolved({})
    types = {r["Type"] for r in resources.values()}
    assert "AWS::Cognito::UserPool" not in types and "AWS::Cognito::UserPoolClient" not in types
    body = _body(resources)
    assert "user_pool" not in body["components"]["securitySchemes"]
    assert "x-amazon-apigateway-gateway-responses" not in body
    for path, method in KEYED_ROUTES:
        assert body["paths"][path][method]["security"] == [{"api_key": []}]
    env = _env(resources)
    assert env["TWOPASS_AUTH_MODE"] == "apikey" and env["TWOPASS_CORS_ALLOW_ORIGINS"] == ""
    assert env["TWOPASS_DEMO"] == "false"


def test_cognito_mode_creates_a_pool_and_checks_its_tokens_at_the_gateway() -> None:
    resources = _resolved(COGNITO)
    client = resources["UserPoolClient"]["Properties"]
    assert client["GenerateSecret"] is False and "ALLOW_USER_SRP_AUTH" in client["ExplicitAuthFlows"]
    body = _body(resources)
    scheme = body["components"]["securitySchemes"]["user_pool"]
    assert scheme["x-amazon-apigateway-authorizer"]["providerARNs"] == ["<UserPool.Arn>"]
    assert scheme["name"] == "Authorization"
    for path, method in KEYED_ROUTES:
        assert body["paths"][path][method]["security"] == [{"api_key": [], "user_pool": []}], path
    assert body["paths"]["/health"]["get"]["security"] == []
    assert body["paths"]["/demo"]["get"]["security"] == []
    env = _env(resources)
    assert env["TWOPASS_AUTH_MODE"] == "cognito"
    assert env["TWOPASS_JWT_ISSUER"] == "https://cognito-idp.eu-west-1.amazonaws.com/<UserPool>"
    assert env["TWOPASS_JWT_AUDIENCE"] == "<UserPoolClient>"
    assert env["TWOPASS_CORS_ALLOW_ORIGINS"] == COGNITO["CorsAllowOrigins"] and env["TWOPASS_DEMO"] == "true"
    # The gateway's own errors (a refused token, a missing key, throttling) are readable by the page.
    for kind in ("DEFAULT_4XX", "DEFAULT_5XX"):
        headers = body["x-amazon-apigateway-gateway-responses"][kind]["responseParameters"]
        assert "gatewayresponse.header.Access-Control-Allow-Origin" in headers


def test_an_existing_pool_and_jwt_mode_create_no_pool() -> None:
    arn = "arn:aws:cognito-idp:eu-west-1:123456789012:userpool/eu-west-1_AbCdEf123"
    existing = _resolved({"AuthMode": "cognito", "CognitoUserPoolArn": arn, "JwtAudience": "client-1"})
    assert "UserPool" not in existing and "UserPoolClient" not in existing
    env = _env(existing)
    assert env["TWOPASS_JWT_ISSUER"] == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
    assert env["TWOPASS_JWT_AUDIENCE"] == "client-1"
    scheme = _body(existing)["components"]["securitySchemes"]["user_pool"]
    assert scheme["x-amazon-apigateway-authorizer"]["providerARNs"] == [arn]

    jwt_mode = _resolved({"AuthMode": "jwt", "JwtIssuer": "https://issuer.example/", "JwtAudience": "api"})
    assert "UserPool" not in jwt_mode
    # No JWT authorizer on a REST API: the function checks the token itself.
    assert "user_pool" not in _body(jwt_mode)["components"]["securitySchemes"]
    env = _env(jwt_mode)
    assert (env["TWOPASS_AUTH_MODE"], env["TWOPASS_JWT_ISSUER"], env["TWOPASS_JWT_AUDIENCE"]) == (
        "jwt", "https://issuer.example/", "api",
    )  # fmt: skip
