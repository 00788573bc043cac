"""The gateway's server span: one per generating request whose trace is recorded, from the
request's arrival to its answer's last byte (a stream's included). It is the request's only
span here: what authentication, admission and routing decided are its attributes (a failed
attempt an event), and the engine's span hangs directly below it.

The gateway speaks W3C Trace Context and keeps its span itself (protocol/otlp.py's
`ServerSpan`, handed to a sink as it ends: app/observability/export.py), not through
OpenTelemetry's SDK, which costs a recorded request several times as much. Sampling is decided
once, before anything else, and kept in the request's context (app/context.py) with the
headers that pass the trace on to the engine:

- a caller's sampled `traceparent`: recorded, as a child of the caller's span;
- a caller's `traceparent` that is not sampled: passed on as it came, nothing recorded;
- none (or a malformed one): a new trace, recorded at the configured ratio; one sampled out
  still gets a new not-sampled `traceparent`, so the engine records nothing either.

The caller's `tracestate` and `baggage` are passed on (W3C's; other propagation formats, such
as B3, are not read here). A request on another route (health, metrics, the model list, ...)
costs a set lookup.
"""

import random
import re
import time
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import context_of
from app.observability.export import SpanSink
from app.observability.metrics import ROUTES
from protocol.otlp import Attribute, ServerSpan, new_span_id, new_trace_id

__all__ = ["TraceRequests", "parse_traceparent"]

# Span names are "METHOD route": a made-up method must not make a name of its own.
_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
_PROPAGATED = frozenset({b"traceparent", b"tracestate", b"baggage"})
_MAX_TRACESTATE = 512
# version-trace_id-parent_id-flags; a later version may add fields after a dash.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.ASCII | re.DOTALL)


def parse_traceparent(header: str) -> tuple[int, int, bool] | None:
    """A W3C `traceparent`'s trace id, parent span id and sampled flag; None when it is not
    one (a caller's garbage starts a new trace instead)."""
    match = _TRACEPARENT.fullmatch(header)
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    trace, parent = int(trace_id, 16), int(parent_id, 16)
    if not trace or not parent:
        return None
    return trace, parent, bool(int(flags, 16) & 1)


def _carried(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The trace context a caller sent: `traceparent` (dropped when sent twice, which W3C makes
        invalid), and `tracestate` and `baggage`, each sent twice or more joined as one list (as
        both specifications say). A `tracestate` over W3C's 512 characters is dropped, as it allows,
    and so is a value that is not ASCII."""
    carried: dict[str, str] = {}
    parents = 0
    for name, value in headers:
        if name in _PROPAGATED:
            if not value.isascii():  # W3C's are ASCII (baggage percent-encodes): not passed on garbled
                continue
            key, text = name.decode("latin-1"), value.decode("latin-1")
            if key == "traceparent":
                parents += 1
                carried[key] = text
            else:
                carried[key] = f"{carried[key]},{text}" if key in carried else text
    if parents > 1:
        del carried["traceparent"]
    if len(carried.get("tracestate", "")) > _MAX_TRACESTATE:
        del carried["tracestate"]
    return carried


class TraceRequests:
    """ASGI middleware: the server span of each request to one of `routes` (exact paths, no
    parameters: a route is its path) whose trace is sampled, handed to `spans` as it ends;
    `ratio` of the traces begun here are recorded. See the module's docstring."""

    def __init__(self, app: ASGIApp, spans: SpanSink, ratio: float = 1.0, routes: Iterable[str] = ROUTES) -> None:
        self.app = app
        self.spans = spans
        self.ratio = ratio
        self.routes = frozenset(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        carried = _carried(scope["headers"])
        request = context_of(scope)
        caller = parse_traceparent(carried["traceparent"]) if "traceparent" in carried else None
        if caller is not None and not caller[2]:
            request.trace_headers = carried  # the caller decided: passed on as it came
            await self.app(scope, receive, send)
            return
        if caller is None:
            carried.pop("tracestate", None)  # a new trace: the caller's vendors' state is not its own
            if not (self.ratio >= 1.0 or random.random() < self.ratio):
                carried["traceparent"] = f"00-{new_trace_id():032x}-{new_span_id():016x}-00"
                request.trace_headers = carried
                await self.app(scope, receive, send)
                return
        trace_id, parent_id = (new_trace_id(), 0) if caller is None else caller[:2]
        method, route = scope["method"], scope["path"]
        if method not in _METHODS:
            method = "_OTHER"
        attributes: dict[str, Attribute] = {"http.request.method": method, "http.route": route, "url.path": route}
        attributes["url.scheme"] = scope.get("scheme") or "http"
        span = ServerSpan(
            f"{'HTTP' if method == '_OTHER' else method} {route}",
            trace_id,
            new_span_id(),
            parent_id,
            carried.get("tracestate", ""),
            attributes,
        )
        carried["traceparent"] = span.traceparent
        request.span, request.trace_headers = span, carried
        await self._recorded(span, scope, receive, send)

    async def _recorded(self, span: ServerSpan, scope: Scope, receive: Receive, send: Send) -> None:
        """The request, its span ended at the answer's last byte (or when the request ends
        without one: an error, a client gone mid-stream) and handed to the sink."""
        status: int | None = None
        ended = False

        def end(failure: str | None = None) -> None:
            nonlocal ended
            ended = True
            span.end_ns = time.time_ns()
            if status is not None:
                span.attributes["http.response.status_code"] = status
                if failure is None and status >= 500:
                    failure = str(status)
            if failure is not None:
                span.attributes["error.type"] = failure
                span.error = True
            self.spans.export(span)

        async def traced_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                end()

        try:
            await self.app(scope, receive, traced_send)
        except BaseException as error:
            if not ended:
                span.add_event("exception", {"exception.type": _type_name(error), "exception.message": str(error)})
                end(_type_name(error))
            raise
        finally:
            if not ended:
                end("incomplete_response")


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
