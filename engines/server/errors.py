"""The engine's exceptions as HTTP answers, mapped in one place (`error_answer`), and the
handlers and catch-all that answer with it (`install_error_handlers`).

A request error (the request's fault: 4xx, `invalid_request_error`) is told from an
engine fault (5xx, `server_error`), because the gateway ejects replicas on faults
only: a tenant's bad request must never look like a broken engine. What the framework
raises (an unknown path, a method a route does not take, a parameter a route declares) is
in the same envelope: never FastAPI's `{"detail": ...}`.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engines.base import (
    AdapterNotFound,
    EngineError,
    EngineFault,
    EngineOverloaded,
    InvalidRequest,
    ModelNotFound,
    SequenceFault,
)
from protocol import SEQUENCE_FAILED, error_payload
from protocol.asgi import CatchAll, install_framework_errors

__all__ = ["ErrorPayload", "error_answer", "install_error_handlers"]

log = logging.getLogger(__name__)

ErrorPayload = dict[str, dict[str, str | None]]


def error_answer(exc: Exception) -> tuple[int, ErrorPayload]:
    """The status and envelope for an exception raised while serving a request."""
    if isinstance(exc, InvalidRequest):
        status = 404 if isinstance(exc, AdapterNotFound) else 400
        return status, error_payload(str(exc), "invalid_request_error", param=exc.param)
    if isinstance(exc, ModelNotFound):
        return 404, error_payload(str(exc), "invalid_request_error", param="model", code="model_not_found")
    if isinstance(exc, EngineOverloaded):
        return 503, error_payload(str(exc), "server_error", code="engine_overloaded")
    if isinstance(exc, SequenceFault):
        return 500, error_payload(str(exc), "server_error", code=SEQUENCE_FAILED)
    if isinstance(exc, EngineFault):
        return 500, error_payload(str(exc), "server_error", code="engine_error")
    # Anything else is a bug: the message names its kind, never its details (they are in the log).
    return 500, error_payload(f"internal engine error: {type(exc).__name__}", "server_error", code="engine_error")


def install_error_handlers(app: FastAPI) -> None:
    """Engine errors, the framework's refusals and a client gone away as answers; the
    catch-all (added first, so it is the innermost middleware) answers a bug."""
    app.add_middleware(CatchAll, answer=error_answer, log=log)

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, exc: EngineError) -> JSONResponse:
        status, payload = error_answer(exc)
        response = JSONResponse(payload, status_code=status)
        if isinstance(exc, EngineOverloaded):
            response.headers["retry-after"] = str(exc.retry_after_s)
        return response

    install_framework_errors(app)
