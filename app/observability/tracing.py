"""The gateway's server span: one per generating request whose trace is sampled, current from
the request's arrival to its answer's last byte (a stream's included), so the spans of
authentication, admission, routing and the upstream call hang below it.

Sampling is decided before any span work. A request on another route (health, metrics, the
model list, ...) costs a set lookup. A caller's `traceparent` that is not sampled is made
current as it came, with no span of ours: the spans below are skipped (`protocol.tracing.span`
follows the flag) and the engine is sent the same not-sampled flag. A request without one asks
the installed provider's sampler once, through `start_span`; a root it samples out is a
non-recording span (ids and a flag, nothing timed or kept) made current for the same reasons:
none of our spans start a trace of their own below it, and the engine does not record one.
FastAPI's own telemetry, which opens a span for every request and whose bookkeeping costs a
request the same whether it is sampled or not, is meant to be off where this is installed.
"""

from collections.abc import Iterable

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability.metrics import ROUTES
from protocol import tracing

__all__ = ["TraceRequests"]

tracer = trace.get_tracer("switchyard.gateway")

# Span names are "METHOD route": a made-up method must not make a name of its own.
_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})


class TraceRequests:
    """ASGI middleware: the server span of each request to one of `routes` (exact paths, no
    parameters: a route is its path) whose trace is sampled; see the module's docstring."""

    def __init__(self, app: ASGIApp, routes: Iterable[str] = ROUTES) -> None:
        self.app = app
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        parent = tracing.extract_asgi(scope["headers"])
        if tracing.sampled_out(parent):
            await _within(parent, self.app, scope, receive, send)
            return
        method, route = scope["method"], scope["path"]
        if method not in _METHODS:
            method = "_OTHER"
        attributes = {"http.request.method": method, "http.route": route, "url.path": route}
        name = f"{'HTTP' if method == '_OTHER' else method} {route}"
        span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        if not span.is_recording():
            await _within(trace.set_span_in_context(span, parent), self.app, scope, receive, send)
            return
        await _traced(span, trace.set_span_in_context(span, parent), self.app, scope, receive, send)


async def _within(context: Context, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The request, with `context` current."""
    token = otel_context.attach(context)
    try:
        await app(scope, receive, send)
    finally:
        otel_context.detach(token)


async def _traced(span: Span, context: Context, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The request with its recording span current, ended at the answer's last byte (or when
    the request ends without one: an error, a client gone mid-stream)."""
    if scope.get("scheme"):
        span.set_attribute("url.scheme", scope["scheme"])
    if scope.get("http_version"):
        span.set_attribute("network.protocol.version", scope["http_version"])
    status: int | None = None
    ended = False

    def end(failure: str | None = None) -> None:
        nonlocal ended
        ended = True
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if failure is None and status >= 500:
                failure = str(status)
        if failure is not None:
            span.set_attribute("error.type", failure)
            span.set_status(StatusCode.ERROR)
        span.end()

    async def traced_send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            end()

    token = otel_context.attach(context)
    try:
        await app(scope, receive, traced_send)
    except BaseException as error:
        if not ended:
            span.record_exception(error)
            end(_type_name(error))
        raise
    finally:
        otel_context.detach(token)
        if not ended:
            end("incomplete_response")


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
