"""The sidecar's refusals and their one mapping to the OpenAI error envelope.

SidecarError                    the status, `code` and `param` a route refuses with
├── BadRequest          400     invalid_request (the code names the check, `param` the field)
├── Refused             400/401/403, with an RFC 6750 challenge (sync/auth.py)
├── Forbidden           403     edge_cannot_publish
├── NotFound            404     adapter_not_found, version_not_found, contribution_not_found, blob_not_found
├── Conflict            409     clock_skew, contribution_changed
├── TooLarge            413     request_too_large
└── RangeNotSatisfiable 416     range_not_satisfiable

`install_error_handlers` also maps what the framework raises: an unknown path (404), a
method a route does not take (405), a request that fails a route's declared parameters
(400, naming the parameter), a client that went away (499, nobody reads it), and anything
else, a bug: logged once with its traceback and answered 500 with only its type's name.
No answer is ever FastAPI's own `{"detail": ...}`.
"""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from protocol import error_payload
from protocol.asgi import CatchAll

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "RangeNotSatisfiable",
    "SidecarError",
    "TooLarge",
    "install_error_handlers",
]

log = logging.getLogger(__name__)

_CODES = {404: "not_found", 405: "method_not_allowed"}


def _error_response(
    status: int, message: str, code: str | None, param: str | None = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_payload(message, kind, param=param, code=code), status_code=status, headers=headers)


class SidecarError(Exception):
    status = 500
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message, self.param, self.headers = message, param, headers
        self.code = code or self.code

    def response(self) -> JSONResponse:
        return _error_response(self.status, self.message, self.code, self.param, self.headers)


class BadRequest(SidecarError):
    status = 400
    code = "invalid_request"


class Forbidden(SidecarError):
    status = 403


class NotFound(SidecarError):
    status = 404


class Conflict(SidecarError):
    status = 409


class TooLarge(SidecarError):
    status = 413
    code = "request_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the body is {size} bytes, over the limit of {limit}")


class RangeNotSatisfiable(SidecarError):
    status = 416
    code = "range_not_satisfiable"


def _param(loc: tuple[Any, ...]) -> str | None:
    """`("body", "a", 0)` -> `a[0]`: where in the request, without the part it came in."""
    name = ""
    for part in loc[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or None


def _internal_error(exc: Exception) -> tuple[int, dict[str, Any]]:
    """A bug, as a client sees it: its kind, never its details (they are in the log)."""
    message = f"The sync sidecar had an internal error ({type(exc).__name__})."
    return 500, error_payload(message, "server_error", code="internal_error")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SidecarError)
    async def sidecar_error(_: Request, exc: SidecarError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return _error_response(exc.status_code, str(exc.detail), _CODES.get(exc.status_code), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        param = _param(tuple(first.get("loc", ())))
        message = f"Invalid value for '{param}': {first.get('msg')}." if param else f"{first.get('msg')}."
        return _error_response(400, message, "invalid_request", param)

    # A middleware, not `exception_handler(Exception)`: Starlette raises again after such a
    # handler answers, and the server logs the same traceback twice.
    app.add_middleware(CatchAll, answer=_internal_error, log=log)
