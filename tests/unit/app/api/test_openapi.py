"""The OpenAPI schema (app/api/openapi.py) describes the whole gateway, and the gateway keeps to
it under fuzzing.

The schema is checked first: every route the app serves is in it with its methods, it is a
valid OpenAPI 3.1 document, and every error it documents is the OpenAI envelope. Then
schemathesis fuzzes gateways in process (its ASGI transport, on its own event loop) in front of
our engine server over a fake engine, from that schema (which both serve at /openapi.json):

- one with authentication disabled, exercised to the engine and back (its admin API answers
  loopback clients only, so its requests come from 127.0.0.1 as a local client's would);
- one with the built-in issuer and no token: every guarded operation answers 401 (or 400 for
  ambiguous credentials), every open one never does;
- the same with a token of scope `chat`: the admin operations answer 403, the rest run.

The checks on every response: no 5xx (but a 504 `deadline_exceeded` for a request that set its
own deadline, which schemathesis does with `x-request-timeout`), every 4xx/5xx body is the
envelope (the token endpoint's own refusals are OAuth2's, RFC 6749 §5.2), and the status,
content type, headers and body conform to the schema. The admin operations that change state
run too: these gateways are this module's own.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import schemathesis
from fastapi.routing import iter_route_contexts
from openapi_spec_validator import validate
from schemathesis.python import asgi
from schemathesis.specs.openapi import checks as openapi_checks
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import predict
from app.api.completions import completion_routes
from app.api.openapi import DOCUMENTED_ROUTES, FINETUNE_PREFIXES
from app.auth.secrets import hash_secret
from app.factory import create_app
from app.settings import GatewaySettings
from app.upstream.asgi import AsgiUpstream
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app

# The routes left out of the schema, and why: the schema itself and its viewers are not the API.
NOT_THE_API = {
    "/openapi.json": "the schema itself",
    "/docs": "Swagger UI, a viewer of the schema",
    "/docs/oauth2-redirect": "Swagger UI's OAuth2 sign-in page",
    "/redoc": "ReDoc, another viewer",
    "/oauth/authorize": "the built-in issuer's login page, HTML for people (the console's sign-in)",
    "/console": "the web console: a redirect to its page",
    "/console/config.json": "the console's own settings",
    "/console/assets/{name}": "the console's built files",
    "/console/assets/{rest}": "the console's built files (what is not one of them)",
    "/console/{route}": "the console's page, for any of its routes",
    "/sync/adapters": "the sync sidecar's adapter API, relayed (documented by the sidecar)",
    "/sync/adapters/{rest}": "the sync sidecar's adapter API, relayed (documented by the sidecar)",
}
OPEN = {
    "/health",
    "/ready",
    "/metrics",
    "/oauth/token",
    "/.well-known/jwks.json",
    "/.well-known/oauth-authorization-server",
}
ADMIN_PREFIXES = ("/admin/", "/status")
CLIENT, SECRET = "svc", "svc-secret"
# Requests of every operation, and all their coverage cases.
CONFIG = schemathesis.Config.from_dict(
    {
        "generation": {"max-examples": 25, "deterministic": True},
        "phases": {"stateful": {"enabled": False}},
        "request-timeout": 30,
    }
)
# The engine's context (the built-in model's), and what a token limit within it is lowered to,
# to keep generations short (one over it stays, for the engine to refuse).
MAX_TOKENS = 16
CONTEXT = 2048
DEADLINE_HEADERS = {"x-request-timeout", "x-stainless-timeout"}
MODEL = "fake-model"
Case = schemathesis.Case[Any]


# --- the schema, in process ----------------------------------------------------------------


SCHEMA = create_app(GatewaySettings(auth_mode="disabled")).openapi()


def test_every_route_the_app_serves_is_in_the_schema_with_its_methods() -> None:
    app = create_app(GatewaySettings(auth_mode="disabled"))
    served: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):
        path = context.path_format  # `{model}`, as OpenAPI writes `{model:path}`
        assert path is not None
        if path in NOT_THE_API:
            continue
        served |= {(method, path) for method in context.methods or () if method != "HEAD"}
    documented = {(method.upper(), path) for path, ops in SCHEMA["paths"].items() for method in ops}
    assert served == documented
    assert {"/v1/chat/completions", "/v1/completions", "/predict", "/metrics", "/oauth/token"} <= {p for _, p in served}


def test_the_completion_routes_stay_plain_starlette_routes_described_here() -> None:
    """The schema is data built once: the hot routes keep no FastAPI machinery per request."""
    app = create_app(GatewaySettings(auth_mode="disabled"))
    plain = {r.path: r for r in app.router.routes if type(r) is Route and r.include_in_schema}
    assert set(plain) == DOCUMENTED_ROUTES
    assert plain["/v1/chat/completions"].endpoint is completion_routes[0].endpoint
    assert plain["/predict"].endpoint is predict.predict
    assert app.openapi() is app.openapi()  # built once, then kept


def test_the_schema_is_valid_openapi_3_1() -> None:
    assert SCHEMA["openapi"].startswith("3.1.")
    validate(SCHEMA)


def test_every_error_is_documented_in_the_envelope() -> None:
    errors = SCHEMA["components"]["responses"]
    envelope = SCHEMA["components"]["schemas"]["ErrorResponse"]
    assert envelope["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    for path, ops in SCHEMA["paths"].items():
        for method, op in ops.items():
            statuses = {int(s) for s in op["responses"]}
            assert {408, 431} <= statuses, (method, path)
            for status, response in op["responses"].items():
                if int(status) < 400:
                    continue
                if "$ref" in response:
                    response = errors[response["$ref"].rsplit("/", 1)[1]]
                schema = response["content"]["application/json"]["schema"]
                token_refusal = path == "/oauth/token" and status in ("400", "401", "429")
                assert schema == {
                    "$ref": "#/components/schemas/" + ("OAuthError" if token_refusal else "ErrorResponse")
                }
    assert "HTTPValidationError" not in SCHEMA["components"]["schemas"]  # FastAPI's 422: never sent


def test_security_is_declared_where_the_guard_checks_it() -> None:
    for path, ops in SCHEMA["paths"].items():
        for op in ops.values():
            if path in OPEN:
                assert all("BearerJWT" not in requirement for requirement in op.get("security", [])), path
                continue
            scope = "admin" if path.startswith(ADMIN_PREFIXES) else "chat"
            if path.startswith(FINETUNE_PREFIXES):
                scope = "finetune"
            assert op["security"] == [{"BearerJWT": [scope]}], path
            assert {"400", "401", "403"} <= set(op["responses"]), path
    assert SCHEMA["components"]["securitySchemes"]["BearerJWT"]["bearerFormat"] == "JWT"


def test_the_completion_operations_take_the_wire_models_and_answer_json_or_a_stream() -> None:
    for path, request, answer in (
        ("/v1/chat/completions", "ChatCompletionRequest", "ChatCompletion"),
        ("/v1/completions", "CompletionRequest", "Completion"),
    ):
        op = SCHEMA["paths"][path]["post"]
        assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{request}"}
        content = op["responses"]["200"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{answer}"}
        assert "text/event-stream" in content
        assert {"400", "404", "409", "413", "415", "422", "429", "502", "503", "504"} <= set(op["responses"])
        assert "Idempotency-Key" in {p["name"] for p in op["parameters"]}
    chat = SCHEMA["components"]["schemas"]["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"])
    assert chat["properties"]["seed"]["anyOf"][0]["maximum"] == 2**63 - 1  # the bounds the edge enforces


# --- schemathesis against gateways in process -------------------------------------------------

ENGINE = "http://engine"


def _gateway(data_dir: Path, **values: Any) -> ASGIApp:
    """A gateway over our engine server (a fake engine with the built-in model's context), its
    requests from 127.0.0.1."""
    pools = [{"name": "local", "region": "local", "kind": "transformers", "replicas": [ENGINE]}]
    fields = {"pools": pools, "data_dir": str(data_dir), "auth_mode": "disabled"} | values
    engine = create_engine_app(FakeEngine(model_name=MODEL, max_model_len=CONTEXT))
    app = create_app(GatewaySettings.model_validate(fields), upstream=AsgiUpstream({ENGINE: engine}))

    async def from_loopback(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope = {**scope, "client": ("127.0.0.1", 50000)}
        await app(scope, receive, send)

    return from_loopback


def _client(app: ASGIApp) -> asgi.ASGIClient:
    """schemathesis' client of `app`: it starts the app's lifespan, on schemathesis' event loop."""
    return asgi.get_client(cast("asgi.ASGIApp", app))


@pytest.fixture(scope="module")
def serving() -> Iterator[None]:
    """The gateways' lifespans run on schemathesis' event loop (where its cases are sent) from
    their first request to the end of this module."""
    yield
    asgi.shutdown_lifespans()


@pytest.fixture(scope="module")
def open_gateway(serving: None, tmp_path_factory: pytest.TempPathFactory) -> ASGIApp:
    return _gateway(tmp_path_factory.mktemp("open-gateway"))


@pytest.fixture(scope="module")
def guarded_gateway(serving: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[ASGIApp, str]:
    """A gateway with the built-in issuer, and a `chat` token from it (taken before the fuzzing
    of /oauth/token spends the address's token budget)."""
    clients = [{"client_id": CLIENT, "secret_hash": hash_secret(SECRET), "scopes": ["chat"]}]
    app = _gateway(tmp_path_factory.mktemp("guarded-gateway"), auth_mode="builtin", auth_clients=clients)
    with _client(app) as client:
        answer = client.post("/oauth/token", data={"grant_type": "client_credentials"}, auth=(CLIENT, SECRET))
    assert answer.status_code == 200, answer.text
    return app, answer.json()["access_token"]


def test_the_gateways_serve_this_schema(open_gateway: ASGIApp, guarded_gateway: tuple[ASGIApp, str]) -> None:
    for app in (open_gateway, guarded_gateway[0]):
        with _client(app) as client:
            served = client.get("/openapi.json")
        assert served.status_code == 200
        assert served.json() == SCHEMA


def _sent_headers(case: Case) -> set[str]:
    return {name.lower() for name in case.headers or {}}


def _error_of(response: schemathesis.Response) -> dict[str, Any]:
    body = json.loads(response.content)
    assert isinstance(body, dict), body
    return body


def no_server_error(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """No 5xx; a request that set its own deadline may reach it (504 deadline_exceeded)."""
    if response.status_code < 500:
        return
    if response.status_code == 504 and _sent_headers(case) & DEADLINE_HEADERS:
        assert _error_of(response)["error"]["code"] == "deadline_exceeded", response.text
        return
    raise AssertionError(f"a server error: {response.status_code} {response.text[:500]}")


def error_envelope(ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case) -> None:
    """Every 4xx/5xx body is the OpenAI envelope; the token endpoint refuses in OAuth2's (RFC 6749 §5.2)."""
    if response.status_code < 400:
        return
    body = _error_of(response)
    if case.path == "/oauth/token" and response.status_code in (400, 401, 429):
        assert isinstance(body["error"], str), body
        assert isinstance(body.get("error_description", ""), str), body
        return
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str), body
    assert error["message"], body
    assert isinstance(error["type"], str), body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body


CHECKS = [
    no_server_error,
    error_envelope,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]


def _bounded(case: Case) -> None:
    """Aim the generating operations at the served model, within a few tokens.

    A random `model` would stop every request at the gateway's 404; a token limit within the
    context (or none) would generate up to 2,048 tokens a request. Everything else is as
    schemathesis made it, wrong types and out-of-range limits included.
    """
    body = case.body
    if not isinstance(body, dict) or case.path not in DOCUMENTED_ROUTES:
        return
    if isinstance(body.get("model"), str):
        body["model"] = MODEL
    if body.get("max_tokens") is None:
        body["max_tokens"] = MAX_TOKENS
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if type(value) is int and MAX_TOKENS < value <= CONTEXT:
            body[field] = MAX_TOKENS


def _documented(case: Case) -> dict[str, Any] | None:
    """The operation the case calls, when the schema has one for its method and path."""
    operations: dict[str, dict[str, Any]] = SCHEMA["paths"].get(case.path, {})
    return operations.get(case.method.lower())


# The gateways serve this same schema (test_the_gateways_serve_this_schema); taken in process, it
# parametrizes the tests at collection (one test per operation).
fuzzed = schemathesis.openapi.from_dict(SCHEMA, config=CONFIG)


@fuzzed.parametrize()
def test_fuzzed_requests_keep_to_the_schema(case: Case, open_gateway: ASGIApp) -> None:
    _bounded(case)
    case.call_and_validate(app=open_gateway, checks=CHECKS)


@fuzzed.parametrize()
def test_without_a_token_guarded_operations_answer_401(case: Case, guarded_gateway: tuple[ASGIApp, str]) -> None:
    response = case.call_and_validate(app=guarded_gateway[0], checks=CHECKS)
    operation = _documented(case)
    if operation is None:  # a method the path does not have: 405, in the envelope (checked above)
        return
    if operation.get("security") and case.path != "/oauth/token":
        ambiguous = response.status_code == 400 and _error_of(response)["error"]["code"] == "invalid_request"
        assert response.status_code == 401 or ambiguous, (response.status_code, response.text)
    else:
        assert response.status_code not in (401, 403) or case.path == "/oauth/token", response.text


@fuzzed.parametrize()
def test_a_chat_token_opens_chat_operations_only(case: Case, guarded_gateway: tuple[ASGIApp, str]) -> None:
    bearer = f"Bearer {guarded_gateway[1]}"
    _bounded(case)
    response = case.call_and_validate(app=guarded_gateway[0], headers={"Authorization": bearer}, checks=CHECKS)
    operation = _documented(case)
    if operation is None or not operation.get("security") or case.path == "/oauth/token":
        return
    if response.request.headers.get("authorization") != bearer:
        return  # a case schemathesis makes without credentials: the test above covers those
    if case.path.startswith((*ADMIN_PREFIXES, *FINETUNE_PREFIXES)):
        assert response.status_code == 403, response.text
        assert _error_of(response)["error"]["code"] == "insufficient_scope"
    else:
        assert response.status_code not in (401, 403), response.text
