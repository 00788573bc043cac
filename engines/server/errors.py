"""The engine's exceptions as HTTP answers, mapped in one place (the server's catch-all answers with it).

A request error (the request's fault: 4xx, `invalid_request_error`) is told from an
engine fault (5xx, `server_error`), because the gateway ejects replicas on faults
only: a tenant's bad request must never look like a broken engine.
"""

import logging

from engines.base import AdapterNotFound, EngineFault, EngineOverloaded, InvalidRequest, ModelNotFound, SequenceFault
from protocol import SEQUENCE_FAILED, error_payload

__all__ = ["ErrorPayload", "error_answer"]

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
