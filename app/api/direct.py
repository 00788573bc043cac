"""The gateway's ASGI app: FastAPI for every route, with the generating routes served directly.

A generating request (`POST` to a completion route or `/predict`) goes through the gateway's
own middleware (the server span, the request metrics, the drain, the catch-all) to its
handler, and its errors become the OpenAI envelope here; it skips FastAPI's and Starlette's
per-request machinery (their error and exception middlewares, the exit stack, the router's
match over every route), which was a twentieth of a keyed request's time
(docs/benchmarks.md). Every other request, and a generating route called with another
method, is FastAPI's, with the same middleware.
"""

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import GatewayError
from protocol.asgi import ClientDisconnected

__all__ = ["GatewayApp", "Middleware"]

Endpoint = Callable[[Request], Awaitable[Response]]
Middleware = tuple[Callable[..., ASGIApp], dict[str, Any]]  # a middleware class and its options


class _Direct:
    """The innermost app of the direct path: the route's handler, its errors as envelopes."""

    def __init__(self, endpoints: dict[str, Endpoint]) -> None:
        self._endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._endpoints[scope["path"]](Request(scope, receive, send))
        except GatewayError as error:
            response = error.response()
        except ClientDisconnected:
            response = Response(status_code=499)  # nobody reads it; the metrics count it
        await response(scope, receive, send)


class GatewayApp(FastAPI):
    """`direct`: the routes served directly (also kept in the router, for the schema and for
    other methods); `middleware`: what wraps them, outermost first, and wraps FastAPI too."""

    def __init__(self, *, direct: Iterable[Route], middleware: list[Middleware], **options: Any) -> None:
        super().__init__(**options)
        routes = list(direct)
        endpoints: dict[str, Endpoint] = {route.path: route.endpoint for route in routes}
        self.router.routes.extend(routes)
        stack: ASGIApp = _Direct(endpoints)
        for cls, kwargs in reversed(middleware):
            stack = cls(stack, **kwargs)
            self.add_middleware(cls, **kwargs)  # the same, around FastAPI
        self._direct = stack
        self._direct_paths = frozenset(endpoints)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._direct_paths and scope["method"] == "POST":
            scope["app"] = self  # what `request.app` reads
            await self._direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
