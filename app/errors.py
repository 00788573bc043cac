"""The gateway's exceptions and their one mapping to the OpenAI error envelope.

GatewayError
├── InvalidRequest          400 invalid_request_error (names `param`)
│   └── AmbiguousCredentials    400 invalid_request (RFC 6750 §3.1: more than one Authorization header)
├── Unauthenticated         401 missing_token (RFC 6750 challenge in WWW-Authenticate)
│   └── InvalidToken            401 invalid_token
├── PermissionDenied        403 permission_denied
│   └── InsufficientScope       403 insufficient_scope
├── NotFound                404 not_found
├── ModelNotFound           404 model_not_found
├── Conflict                409 conflict
│   └── IdempotencyKeyInUse     409 idempotency_key_in_use
├── PayloadTooLarge         413 request_too_large
├── RateLimited             429 rate_limit_exceeded (the tenant's requests or tokens per minute)
├── TenantOverShare         429 tenant_over_share (shed: the tenant has more than its share waiting)
├── UnsupportedMediaType    415 unsupported_media_type
├── Unprocessable           422 (the code names the check that failed)
│   └── IdempotencyKeyReused    422 idempotency_key_reused
├── UpstreamFailed          502 bad_gateway
├── NoEngineAvailable       503 engine_unavailable
│   └── EngineUnreachable       (no connection: safe to try another replica)
├── IdempotencyUnavailable  503 idempotency_unavailable
├── Overloaded              503 overloaded (shed: every replica busy and the queue full)
├── ShuttingDown            503 server_shutting_down
└── UpstreamTimeout         504 upstream_timeout
    └── DeadlineExceeded        504 deadline_exceeded (the request's own deadline passed)
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from protocol import error_payload
from protocol.asgi import CatchAll, install_framework_errors

__all__ = [
    "AmbiguousCredentials",
    "DeadlineExceeded",
    "EngineUnreachable",
    "GatewayError",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "DatabaseUnavailable",
    "IdempotencyUnavailable",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "Conflict",
    "ModelNotFound",
    "NotFound",
    "Overloaded",
    "NoEngineAvailable",
    "PayloadTooLarge",
    "PermissionDenied",
    "RateLimited",
    "Unprocessable",
    "ShuttingDown",
    "TenantOverShare",
    "Unauthenticated",
    "UnsupportedMediaType",
    "UpstreamFailed",
    "UpstreamTimeout",
    "CATCH_ALL",
    "install_error_handlers",
    "shed_headers",
]

log = logging.getLogger(__name__)


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        payload = error_payload(self.message, self.type, param=self.param, code=self.code)
        return JSONResponse(payload, status_code=self.status, headers=self.headers)


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


REALM = "switchyard"


class Unauthenticated(GatewayError):
    """No bearer token: a bare challenge (RFC 6750 §3.1: no error code when none was sent)."""

    status = 401
    type = "invalid_request_error"
    code = "missing_token"

    def __init__(self, message: str = "This endpoint needs an OAuth2 bearer access token.") -> None:
        super().__init__(message, headers={"www-authenticate": f'Bearer realm="{REALM}"'})


class InvalidToken(Unauthenticated):
    code = "invalid_token"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        description = message.replace("\\", "").replace('"', "'")
        self.headers["www-authenticate"] = (
            f'Bearer realm="{REALM}", error="invalid_token", error_description="{description}"'
        )


class AmbiguousCredentials(InvalidRequest):
    code = "invalid_request"

    def __init__(self, message: str) -> None:
        super().__init__(
            message,
            param="Authorization",
            headers={"www-authenticate": f'Bearer realm="{REALM}", error="invalid_request"'},
        )


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class InsufficientScope(PermissionDenied):
    code = "insufficient_scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"The access token lacks the scope `{scope}` this endpoint needs.")
        self.headers["www-authenticate"] = f'Bearer realm="{REALM}", error="insufficient_scope", scope="{scope}"'


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class IdempotencyKeyInUse(Conflict):
    code = "idempotency_key_in_use"

    def __init__(self) -> None:
        super().__init__(
            "A request with this Idempotency-Key is still running; retry shortly.",
            param="Idempotency-Key",
            headers=shed_headers(1000),
        )


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or is not served here.", param="model")


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class StorageLimitReached(GatewayError):
    """A tenant's files would hold more than its share of storage (`max_stored_bytes_per_tenant`)."""

    status = 413
    type = "invalid_request_error"
    code = "storage_limit_reached"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"Your files would hold more than your storage limit of {limit} bytes; delete some first.", param="file"
        )


class TooManyJobs(GatewayError):
    """A tenant already has its limit of unfinished fine-tuning jobs."""

    status = 429
    type = "rate_limit_error"
    code = "too_many_jobs"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"You have {limit} fine-tuning jobs in progress, your limit; wait for one to finish or cancel one."
        )


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Unprocessable(GatewayError):
    status = 422
    type = "invalid_request_error"

    def __init__(self, message: str, *, code: str, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.code = code


class IdempotencyKeyReused(Unprocessable):
    def __init__(self) -> None:
        super().__init__(
            "This Idempotency-Key was used with a different request body.",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )


class UpstreamFailed(GatewayError):
    status = 502
    code = "bad_gateway"


class NoEngineAvailable(GatewayError):
    status = 503
    code = "engine_unavailable"


def shed_headers(retry_after_ms: int) -> dict[str, str]:
    """Retry-After in whole seconds (1 to 120: the SDKs ignore more) and in milliseconds."""
    ms = max(1, min(retry_after_ms, 120_000))
    return {"retry-after": str(max(1, -(-ms // 1000))), "retry-after-ms": str(ms), "x-should-retry": "true"}


class RateLimited(GatewayError):
    """Over the tenant's requests or tokens per minute (app/reliability/limits.py)."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, kind: str, retry_after_ms: int, headers: dict[str, str]) -> None:
        super().__init__(
            f"Rate limit reached for {kind} per minute; retry after the time given.",
            headers={**headers, **shed_headers(retry_after_ms)},
        )
        self.type = kind  # "requests" or "tokens", as OpenAI's API names it


class TenantOverShare(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "tenant_over_share"

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(
            "Too many of your requests are waiting for capacity; retry after the time given.",
            headers=shed_headers(retry_after_ms),
        )


class Overloaded(GatewayError):
    status = 503
    code = "overloaded"

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(
            "Every engine is busy and the queue is full; retry after the time given.",
            headers=shed_headers(retry_after_ms),
        )


class ShuttingDown(GatewayError):
    status = 503
    code = "server_shutting_down"

    def __init__(self) -> None:
        super().__init__(
            "The gateway is shutting down; retry on another replica.",
            headers={"retry-after": "1", "x-should-retry": "true"},
        )


class IdempotencyUnavailable(GatewayError):
    status = 503
    code = "idempotency_unavailable"

    def __init__(
        self,
        message: str = "The idempotency store is unreachable, so a request with an Idempotency-Key cannot be made "
        "safe; retry shortly.",
    ) -> None:
        super().__init__(message, headers={"retry-after": "1", "x-should-retry": "true"})


class DatabaseUnavailable(GatewayError):
    status = 503
    code = "database_unavailable"

    def __init__(self, message: str = "The fine-tuning database is unreachable; retry shortly.") -> None:
        super().__init__(message, headers={"retry-after": "2", "x-should-retry": "true"})


class IssuerUnavailable(GatewayError):
    """The external issuer's metadata cannot be read: the console cannot offer its sign-in."""

    status = 503
    code = "issuer_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "5"})


class UsageUnavailable(GatewayError):
    """The region's usage counts (in Redis) cannot be read now."""

    status = 503
    code = "usage_unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"retry-after": "2"})


class EngineUnreachable(NoEngineAvailable):
    """The replica refused or dropped the connection: nothing reached its model."""


class UpstreamTimeout(GatewayError):
    status = 504
    code = "upstream_timeout"


class DeadlineExceeded(UpstreamTimeout):
    code = "deadline_exceeded"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> JSONResponse:
        return exc.response()

    install_framework_errors(app)


def _internal_error(_: Exception) -> tuple[int, dict[str, Any]]:
    """What a bug looks like from outside: never its message (that is in the log)."""
    return 500, error_payload("The gateway had an internal error.", "server_error")


# The innermost middleware (app/factory.py): its 500 is counted and drained like any answer.
CATCH_ALL: tuple[type[CatchAll], dict[str, Any]] = (CatchAll, {"answer": _internal_error, "log": log})
