"""Helpers for the HTTP servers that speak the protocol (the gateway and the engines)."""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.telemetry import TelemetryConfig
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol.errors import error_payload

__all__ = ["NO_FRAMEWORK_TELEMETRY", "CancelOnDisconnect", "CatchAll", "ClientDisconnected", "install_framework_errors"]

# FastAPI's own OpenTelemetry opens a span and records metrics for every request, probes and
# scrapes included, sampled or not (a fifth of the gateway's throughput at 10 % sampling,
# docs/benchmarks.md): our servers trace what they choose to, and turn it off.
NO_FRAMEWORK_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
    "auto_configure": False,
}


class CatchAll:
    """ASGI middleware: an exception nothing else handled is logged once, with its traceback
    and route, and answered in the envelope `answer(exc)` gives (or, once the answer has
    started, ends it).

    Starlette's own catch-all (an `Exception` handler) re-raises after answering, so the
    server logs the same traceback a second time; this one does not.
    """

    def __init__(
        self, app: ASGIApp, *, answer: Callable[[Exception], tuple[int, dict[str, Any]]], log: logging.Logger
    ) -> None:
        self.app = app
        self._answer = answer
        self._log = log

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
        except ClientDisconnect:  # the caller left mid-body: nobody is there to answer, no fault here
            self._log.info("client went away during %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await Response(status_code=499)(scope, receive, send)
        except Exception as exc:
            self._log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            if not started:
                status, payload = self._answer(exc)
                await JSONResponse(payload, status_code=status)(scope, receive, send)


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


class CancelOnDisconnect:
    """`async with CancelOnDisconnect(request)`: cancel the enclosed work as soon as the client
    disconnects, raising ClientDisconnected.

    Enter it once the request body has been read: the next ASGI message is then the
    disconnect. One watcher task per request; the work itself runs in the caller's task, so
    nothing is copied or scheduled on the fast path. A class, not a generator-based context
    manager: this runs on every request.
    """

    __slots__ = ("_gone", "_request", "_task", "_watch")

    def __init__(self, request: Request) -> None:
        self._request = request
        self._gone = False

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._watch = asyncio.create_task(_disconnect(self._request))
        self._watch.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, watch: "asyncio.Task[None]") -> None:
        if not watch.cancelled() and watch.exception() is None:
            self._gone = True
            self._task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, _: object) -> None:
        self._watch.remove_done_callback(self._on_disconnect)
        self._watch.cancel()
        if kind is not None and issubclass(kind, asyncio.CancelledError) and self._gone and self._task.uncancel() == 0:
            raise ClientDisconnected from None


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def install_framework_errors(app: FastAPI) -> None:
    """The framework's own refusals in the envelope (an unknown path or method, a route's
    declared parameter that fails), and a client gone away as 499 (nobody reads it)."""

    @app.exception_handler(ClientDisconnected)
    async def client_gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_payload(str(exc.detail), type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        first: dict[str, Any] = next(iter(exc.errors()), {})
        param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None  # past `body`, `path`, ...
        reason = first.get("msg", "The request is invalid")
        message = f"Invalid value for '{param}': {reason}." if param else f"{reason}."
        return JSONResponse(error_payload(message, "invalid_request_error", param=param), status_code=400)
