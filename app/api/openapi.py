"""The gateway's OpenAPI 3.1 schema: every route it serves, with its security and its errors.

FastAPI describes its own routes, but not the completion routes and `/predict`: those are plain
Starlette routes (app/api/completions.py says why) that parse their bodies with the wire models,
so their operations are written here from those models' JSON schemas. Every operation is then
given what FastAPI cannot see: the scope its bearer token needs (app/auth), the errors it can
answer, all in the OpenAI error envelope (the token endpoint's in OAuth2's, RFC 6749 §5.2),
and the errors any request can meet (slow or oversized headers, app/api/http_limits.py; a draining
gateway, app/reliability/drain.py). FastAPI's 422 `HTTPValidationError` goes: this gateway answers a
malformed request 400 in the envelope (app/errors.py).

`install_openapi(app)` makes `app.openapi` build the schema on first use and keep it: nothing
runs per request, and the completion routes stay plain routes.
"""

import copy
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import Route

from app.api.admin import AddReplica
from app.api.predict import PredictRequest
from protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    FinishReason,
    JobCreateRequest,
    ModelCard,
    ModelList,
    Usage,
)

__all__ = ["DOCUMENTED_ROUTES", "FINETUNE_PREFIXES", "PredictAnswer", "build_openapi", "install_openapi"]

_SCHEMAS = "#/components/schemas/"
_RESPONSES = "#/components/responses/"
_SECURITY = "BearerJWT"
_OK = "200"


class PredictAnswer(BaseModel):
    """`/predict`'s answer: the first choice of the chat completion it ran."""

    text: str
    model: str
    finish_reason: FinishReason
    usage: Usage


_MODELS: list[tuple[type[BaseModel], JsonSchemaMode]] = [
    (ChatCompletionRequest, "validation"),
    (CompletionRequest, "validation"),
    (PredictRequest, "validation"),
    (AddReplica, "validation"),
    (JobCreateRequest, "validation"),
    (ChatCompletion, "serialization"),
    (ChatCompletionChunk, "serialization"),
    (Completion, "serialization"),
    (PredictAnswer, "serialization"),
    (ModelList, "serialization"),
    (ModelCard, "serialization"),
]

# The envelope as the gateway sends it: all four members, always (protocol/errors.py).
_ERROR_ENVELOPE = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}
_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "string",
            "examples": ["invalid_request", "invalid_client", "invalid_grant", "invalid_scope", "slow_down"],
        },
        "error_description": {"type": "string"},
    },
}

_RETRY_HEADERS = {
    "retry-after": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}},
    "retry-after-ms": {"description": "The same wait in milliseconds.", "schema": {"type": "integer"}},
}
_CHALLENGE = {"www-authenticate": {"description": "The RFC 6750 challenge.", "schema": {"type": "string"}}}
# Each error status: its component name, what it means here, and the headers that come with it.
_ERRORS: dict[int, tuple[str, str, dict[str, Any]]] = {
    400: ("BadRequest", "The request is malformed (names `param`), or has two Authorization headers.", {}),
    401: ("Unauthorized", "No bearer token, or one that is invalid or expired.", _CHALLENGE),
    403: ("Forbidden", "The token lacks the scope; or, authentication disabled, the client is not local.", {}),
    404: ("NotFound", "The model, pool, replica or issuer is not here.", {}),
    408: ("RequestTimeout", "The request's headers or body did not arrive in time (connection closed).", {}),
    409: ("Conflict", "A request with this Idempotency-Key is still running, or the change conflicts.", {}),
    413: ("PayloadTooLarge", "The body is over `max_body_bytes`, or the uploaded file over `max_upload_bytes`.", {}),
    415: ("UnsupportedMediaType", "The body is not JSON (an upload: not multipart/form-data).", {}),
    422: (
        "Unprocessable",
        "The Idempotency-Key was used with another body, its answer was too large to keep, the engine failed on this "
        "request alone (`sequence_failed`), or the replica failed its check.",
        {},
    ),
    429: ("RateLimited", "Over the tenant's rate limits or its share of the queue.", _RETRY_HEADERS),
    431: ("HeadersTooLarge", "The headers are over `max_header_bytes` or `max_header_fields`.", {}),
    500: ("InternalError", "The engine failed (`engine_error`); relayed as it answered.", {}),
    502: ("BadGateway", "The engine answered with something unusable.", {}),
    503: (
        "Unavailable",
        "No engine is reachable, all are busy, the gateway is shutting down, or the fine-tuning database is "
        "unreachable (`database_unavailable`).",
        _RETRY_HEADERS,
    ),
    504: ("GatewayTimeout", "The engine did not answer within the request's deadline.", {}),
}
_ANY_REQUEST = (408, 431)  # answered before the app sees the request (app/api/http_limits.py)
_GUARDED = (400, 401, 403)  # the guard's: ambiguous credentials, no or bad token, missing scope
_GENERATING = (400, 404, 409, 413, 415, 422, 429, 500, 502, 503, 504)


FINETUNE_PREFIXES = ("/v1/files", "/v1/fine_tuning", "/fine-tune")


def _scope(path: str) -> str | None:
    """The scope a path's bearer token needs; None: open (probes, scrapers, the issuer's own routes)."""
    if path.startswith(("/admin/", "/status")):
        return "admin"
    if path.startswith(FINETUNE_PREFIXES):
        return "finetune"
    if path.startswith(("/v1/", "/predict")):
        return "chat"
    return None


# Per operation, the statuses it answers beyond the guard's and those of any request.
_OPERATION_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/chat/completions"): _GENERATING,
    ("post", "/v1/completions"): _GENERATING,
    ("post", "/predict"): _GENERATING,
    ("get", "/v1/models/{model}"): (404,),
    ("post", "/v1/files"): (400, 413, 415),
    ("get", "/v1/files"): (400,),
    ("get", "/v1/files/{file_id}"): (404,),
    ("delete", "/v1/files/{file_id}"): (404,),
    ("get", "/v1/files/{file_id}/content"): (404,),
    ("post", "/v1/fine_tuning/jobs"): (400, 413, 415, 429),
    ("post", "/fine-tune"): (400, 413, 415, 429),
    ("get", "/v1/fine_tuning/jobs"): (400,),
    ("get", "/v1/fine_tuning/jobs/{job_id}"): (404,),
    ("post", "/v1/fine_tuning/jobs/{job_id}/cancel"): (400, 404),
    ("get", "/v1/fine_tuning/jobs/{job_id}/events"): (400, 404),
    ("get", "/v1/fine_tuning/jobs/{job_id}/checkpoints"): (400, 404),
    ("get", "/ready"): (503,),
    ("get", "/admin/pools/{pool}"): (404,),
    ("post", "/admin/pools/{pool}/replicas"): (400, 404, 409, 413, 415, 422),
    ("delete", "/admin/pools/{pool}/replicas/{replica_id}"): (404, 409),
    ("post", "/admin/pools/{pool}/replicas/{replica_id}/drain"): (404, 409),
    ("post", "/admin/pools/{pool}/replicas/{replica_id}/undrain"): (404, 409),
    ("post", "/oauth/token"): (404,),
    ("get", "/.well-known/jwks.json"): (404,),
    ("get", "/.well-known/oauth-authorization-server"): (404,),
}
_NEVER_DRAINED = frozenset({"/health"})  # liveness answers while the gateway drains
_FASTAPI_422 = frozenset({"HTTPValidationError", "ValidationError"})  # the schemas of a 422 never sent


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "description": description, "schema": schema}


_GENERATION_HEADERS = [
    _header(
        "Idempotency-Key",
        "A retry with the same key, tenant and body gets the first answer (kept for the retention).",
        {"type": "string", "minLength": 1, "maxLength": 255},
    ),
    _header("x-request-id", "Sent to the engine and answered back; one is made when absent.", {"type": "string"}),
    _header("x-session-id", "Requests of one session are routed to the same replica.", {"type": "string"}),
    _header("x-request-timeout", "The request's deadline in seconds.", {"type": "number", "exclusiveMinimum": 0}),
]
_ROUTE_HEADERS = {
    "x-request-id": {"description": "The request's id.", "schema": {"type": "string"}},
    "x-route-region": {"description": "The region of the replica that answered.", "schema": {"type": "string"}},
    "x-route-replica": {"description": "The replica that answered.", "schema": {"type": "string"}},
}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _SCHEMAS + name}


def _examples(**bodies: dict[str, Any]) -> dict[str, Any]:
    return {name: {"value": body} for name, body in bodies.items()}


# The model the embedded default serves (the built-in one), so the examples run as they are.
_EXAMPLE_MODEL = "switchyard-tiny-v1"
_CHAT = {"model": _EXAMPLE_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
_COMPLETION = {"model": _EXAMPLE_MODEL, "prompt": "def main():", "max_tokens": 16}
_STREAMED = {"stream": True, "stream_options": {"include_usage": True}}


def _generation(summary: str, request: str, answer: str, chunk: str, example: dict[str, Any]) -> dict[str, Any]:
    # One event of the stream (OpenAPI 3.1 has no item schema; 3.2's `itemSchema` is this).
    event = {
        "type": "object",
        "description": f"With `stream: true`, server-sent events: each `data` is a {chunk} as JSON, then "
        "`[DONE]`; an error after the first event is one event holding the error envelope.",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "anyOf": [
                    {"const": "[DONE]"},
                    {
                        "contentMediaType": "application/json",
                        "contentSchema": {"anyOf": [_ref(chunk), _ref("ErrorResponse")]},
                    },
                ],
            }
        },
    }
    content = _json(_ref(answer)) | {"text/event-stream": {"schema": event}}
    return {
        "summary": summary,
        "parameters": _GENERATION_HEADERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref(request),
                    "examples": _examples(answer=example, stream=example | _STREAMED),
                }
            },
        },
        "responses": {_OK: {"description": "The completion.", "headers": _ROUTE_HEADERS, "content": content}},
    }


# The plain Starlette routes' operations, which FastAPI does not describe.
_STARLETTE_OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/chat/completions"): _generation(
        "Create a chat completion", "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", _CHAT
    ),
    ("post", "/v1/completions"): _generation(
        "Create a completion", "CompletionRequest", "Completion", "Completion", _COMPLETION
    ),
    ("post", "/predict"): {
        "summary": "Answer one prompt (the original platform's API), through the chat pipeline",
        "parameters": _GENERATION_HEADERS,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": _ref("PredictRequest"),
                    "examples": _examples(answer={"text": "Say hello.", "max_tokens": 16}),
                }
            },
        },
        "responses": {
            _OK: {"description": "The answer.", "headers": _ROUTE_HEADERS, "content": _json(_ref("PredictAnswer"))}
        },
    },
}
DOCUMENTED_ROUTES = frozenset(path for _, path in _STARLETTE_OPERATIONS)
"""The plain Starlette routes this module describes (a test checks that it describes them all)."""

_TOKEN_RESPONSE = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in"],
    "properties": {
        "access_token": {"type": "string", "description": "A JWT (RFC 9068)."},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}
# What FastAPI cannot know about its own routes: bodies read by hand, answers typed as dicts.
_AMENDMENTS: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/models"): {
        "responses": {_OK: {"description": "The models served.", "content": _json(_ref("ModelList"))}}
    },
    ("get", "/v1/models/{model}"): {
        "responses": {_OK: {"description": "The model.", "content": _json(_ref("ModelCard"))}}
    },
    ("get", "/metrics"): {
        "summary": "Prometheus metrics (open, like the probes: scrapers carry no tokens; bounded labels only)",
        "responses": {
            _OK: {"description": "The exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}
        },
    },
    ("post", "/admin/pools/{pool}/replicas"): {"requestBody": {"required": True, "content": _json(_ref("AddReplica"))}},
    ("post", "/v1/files"): {
        "summary": "Upload a fine-tuning dataset (JSONL of chats), streamed to disk and checked line by line",
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "purpose"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": ["fine-tune"]},
                        },
                    }
                }
            },
        },
        "responses": {_OK: {"description": "The file, kept.", "content": _json(_ref("FileObject"))}},
    },
    ("post", "/v1/fine_tuning/jobs"): {"requestBody": {"required": True, "content": _json(_ref("JobCreateRequest"))}},
    ("post", "/fine-tune"): {
        "summary": "Create a fine-tuning job (the original platform's route; the same as /v1/fine_tuning/jobs)",
        "requestBody": {"required": True, "content": _json(_ref("JobCreateRequest"))},
    },
    ("get", "/v1/files/{file_id}/content"): {
        "responses": {
            _OK: {
                "description": "The file as uploaded.",
                "content": {"application/jsonl": {"schema": {"type": "string"}}},
            }
        },
    },
    ("post", "/oauth/token"): {
        "summary": "Issue an access token (client credentials grant; built-in issuer only)",
        "security": [{"ClientSecretBasic": []}],
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"const": "client_credentials"},
                            "scope": {"type": "string", "description": "Space-separated: chat, finetune, admin."},
                        },
                    }
                }
            },
        },
        "responses": {
            _OK: {"description": "The token.", "content": _json(_TOKEN_RESPONSE)},
            **{
                str(status): {"description": description, "content": _json(_ref("OAuthError"))}
                for status, description in (
                    (400, "RFC 6749 §5.2: invalid_request, unsupported_grant_type, invalid_scope."),
                    (401, "invalid_client: the client's HTTP Basic credentials are missing or wrong."),
                    (429, "slow_down: too many token requests from this address."),
                )
            },
        },
    },
}

_SECURITY_SCHEMES = {
    _SECURITY: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "An OAuth2 access token (RFC 9068) in one `Authorization: Bearer` header, from the "
        "built-in issuer (`/oauth/token`) or the external one; the operation's roles are the scopes its "
        "`scope` claim must hold. A gateway started with auth_mode `disabled` listens on loopback only "
        "and checks no token.",
    },
    "ClientSecretBasic": {
        "type": "http",
        "scheme": "basic",
        "description": "The client's id and secret, form-urlencoded, as HTTP Basic credentials (RFC 6749 §2.3.1).",
    },
}


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The whole schema: FastAPI's operations amended, the plain routes' added, errors on all."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary="An OpenAI-compatible gateway for LLM inference spread over several regions.",
        routes=app.routes,
    )
    paths: dict[str, dict[str, Any]] = schema.setdefault("paths", {})
    for path, methods in _plain_routes(app.routes):
        for method in methods:
            paths.setdefault(path, {})[method] = copy.deepcopy(_STARLETTE_OPERATIONS.get((method, path), {}))
    for path, operations in paths.items():
        for method, operation in operations.items():
            _amend(method, path, operation)
    components = schema.setdefault("components", {})
    fastapis = {k: v for k, v in components.get("schemas", {}).items() if k not in _FASTAPI_422}
    errors = copy.deepcopy({"ErrorResponse": _ERROR_ENVELOPE, "OAuthError": _OAUTH_ERROR})
    components["schemas"] = fastapis | _model_schemas() | errors
    components["responses"] = {
        name: {"description": description, "headers": copy.deepcopy(headers), "content": _json(_ref("ErrorResponse"))}
        for name, description, headers in _ERRORS.values()
    }
    components["securitySchemes"] = copy.deepcopy(_SECURITY_SCHEMES)
    return schema


def install_openapi(app: FastAPI) -> None:
    """`app.openapi` (and so /openapi.json) answers the whole schema, built once on first use."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(build_openapi(app))
        return built

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to replace it


def _plain_routes(routes: Iterable[Any]) -> Iterable[tuple[str, list[str]]]:
    """(path, lower-case methods) of the Starlette routes in the schema that are not FastAPI's."""
    for context in iter_route_contexts(list(routes)):
        route = context.original_route
        if isinstance(route, Route) and not isinstance(route, APIRoute) and route.include_in_schema:
            yield route.path, sorted(m.lower() for m in route.methods or () if m != "HEAD")


def _amend(method: str, path: str, operation: dict[str, Any]) -> None:
    amendment = copy.deepcopy(_AMENDMENTS.get((method, path), {}))
    responses: dict[str, Any] = operation.setdefault("responses", {})
    responses.pop("422", None)  # FastAPI's HTTPValidationError: never sent (a 400 in the envelope is)
    responses.update(amendment.get("responses", {}))
    operation.update({k: v for k, v in amendment.items() if k != "responses"})
    scope = _scope(path)
    errors = set(_ANY_REQUEST) | set(_OPERATION_ERRORS.get((method, path), ()))
    if scope is not None:
        operation["security"] = [{_SECURITY: [scope]}]
        errors |= set(_GUARDED)
    if path not in _NEVER_DRAINED:
        errors.add(503)
    for status in sorted(errors):
        responses.setdefault(str(status), {"$ref": _RESPONSES + _ERRORS[status][0]})


def _model_schemas() -> dict[str, Any]:
    _, top = models_json_schema(_MODELS, ref_template=_SCHEMAS + "{model}")
    defs: dict[str, Any] = top["$defs"]
    return defs
