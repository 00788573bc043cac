"""The engine's exceptions as HTTP answers, mapped in one place, and the catch-all that logs what it caught.

A request error (the request's fault: 4xx, `invalid_request_error`) is told from an
engine fault (5xx, `server_error`), because the gateway ejects replicas on faults
only: a tenant's bad request must never look like a broken engine.
"""

import logging

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engines.base import AdapterNotFound, EngineFault, EngineOverloaded, InvalidRequest, ModelNotFound, SequenceFault
from protocol import SEQUENCE_FAILED, error_payload

__all__ = ["CatchAll", "ErrorPayload", "error_answer"]

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


class CatchAll:
    """ASGI middleware: an exception nothing else handled is logged with its traceback and
    answered 500 in the envelope (or, once the answer has started, ends it).

    Starlette's own catch-all re-raises after answering, so the server logs the same
    traceback twice; this one logs it once, with the request's route.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            if not started:
                status, payload = error_answer(exc)
                await JSONResponse(payload, status_code=status)(scope, receive, send)
