"""The gateway's server span: one per generating request whose trace is recorded, from the
request's arrival to its answer's last byte (a stream's included). It is the request's
only span here: what authentication, admission and routing decided are its attributes (a
failed attempt an event), and the engine's span hangs directly below it.

Sampling is decided once, before any span work, and kept in the request's context
(app/context.py), which everything after reads instead of OpenTelemetry's current span (none is
made current). A
request on another route (health, metrics, the model list, ...) costs a set lookup. A caller's
`traceparent` that is not sampled is passed on to the engine as it came, with no span of ours.
A request without one is sampled at the configured ratio (`protocol.tracing.root_sampled`)
before any span is begun; one sampled out gets a new not-sampled `traceparent` for the engine
(so the engine does not record a trace of its own), and nothing is made current. (A provider
whose own sampler refuses a span we ask for is followed the same way.) FastAPI's own telemetry,
which opens a span for every request and whose bookkeeping costs a request the same whether
it is sampled or not, is meant to be off where this is installed.
"""

from collections.abc import Iterable

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import RecordedTrace, context_of
from app.observability.metrics import ROUTES
from protocol import tracing

__all__ = ["TraceRequests"]

tracer = trace.get_tracer("switchyard.gateway")

_EMPTY = Context()
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
        request = context_of(scope)
        carried = tracing.propagation_headers(scope["headers"])
        parent = tracing.extract(carried) if carried else _EMPTY
        caller = trace.get_current_span(parent).get_span_context()
        if caller.is_valid and not caller.trace_flags.sampled:
            request.trace_headers = carried  # passed on as it came
            await self.app(scope, receive, send)
            return
        if not caller.is_valid and not tracing.root_sampled():
            request.trace_headers = tracing.unsampled_headers(parent if carried else None)
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], scope["path"]
        if method not in _METHODS:
            method = "_OTHER"
        attributes = {"http.request.method": method, "http.route": route, "url.path": route}
        attributes["url.scheme"] = scope.get("scheme") or "http"
        name = f"{'HTTP' if method == '_OTHER' else method} {route}"
        span = tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=attributes)
        context = trace.set_span_in_context(span, parent)
        if not span.is_recording():
            request.trace_headers = tracing.headers_of(context)
            await self.app(scope, receive, send)
            return
        request.trace = RecordedTrace(span, context)
        await _traced(request.trace, self.app, scope, receive, send)


async def _traced(recorded: RecordedTrace, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """The request, its span ended at the answer's last byte (or when the request ends without
    one: an error, a client gone mid-stream) with what the request annotated. Nothing is made
    current: what needs the trace reads it from the request's context."""
    span, attributes = recorded.span, recorded.attributes
    status: int | None = None
    ended = False

    def end(failure: str | None = None) -> None:
        nonlocal ended
        ended = True
        if status is not None:
            attributes["http.response.status_code"] = status
            if failure is None and status >= 500:
                failure = str(status)
        if failure is not None:
            attributes["error.type"] = failure
            span.set_status(StatusCode.ERROR)
        span.set_attributes(attributes)
        span.end()

    async def traced_send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            end()

    try:
        await app(scope, receive, traced_send)
    except BaseException as error:
        if not ended:
            span.record_exception(error)
            end(_type_name(error))
        raise
    finally:
        if not ended:
            end("incomplete_response")


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
