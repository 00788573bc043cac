"""What the gateway knows about one API request while answering it.

The request metrics middleware (app/observability/metrics.py) makes a `RequestContext` as a
generating request arrives and leaves it in the ASGI scope; the server span's middleware
(app/observability/tracing.py) says whether the request's trace is recorded; the route fills
in the model and the tenant, and whoever relays a stream tells it when the stream is over. The
metrics, the access log, rate-limit corrections and the trace read it from there: one typed
object instead of loose keys in `scope["state"]`.

The trace's sampling is decided once, as the request arrives, and the headers that pass it on
to the engine are made then: `pass_trace_on` copies them. A request whose trace is not recorded
(most of them, at any sampling ratio below one) costs `annotate` one test; one that is
recorded adds the attributes to its server span (a plain record: protocol/otlp.py).
"""

import itertools
import secrets
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from starlette.types import Scope

from protocol.fine_tuning import is_fine_tuned
from protocol.otlp import Attribute, ServerSpan

__all__ = ["RequestContext", "StreamEnd", "begin", "context_of", "request_id"]

# Told when a request's stream is over, however it ended: the events it relayed, and the
# `usage.total_tokens` the engine reported in it (when the client asked for usage), else None.
StreamEnd = Callable[[int, int | None], None]

_SCOPE_KEY = "switchyard.context"
_MAX_REQUEST_ID = 128
_ID_PREFIX = secrets.token_hex(8)  # per process: ids from several gateways never collide
_ids = itertools.count(1)


@dataclass(slots=True)
class RequestContext:
    request_id: str
    started: float  # time.perf_counter() at arrival
    model: str = "other"  # as a metric label: a model some replica serves, else `other`
    tenant: str | None = None
    tokens: int | None = None  # what its answer used: the engine's usage, else a stream's events
    first_token_s: float | None = None  # a stream's time from arrival to its first event
    span: ServerSpan | None = None  # its server span, when its trace is recorded here
    trace_headers: Mapping[str, str] | None = None  # what passes its trace on, when tracing is on
    _stream_ends: list[StreamEnd] | None = None

    def label(self, model: str, known: frozenset[str], tenant: str) -> None:
        """The request's model (bounded to the served ones, for metric labels: a fine-tuned
        model's name, which only its owner should learn, is `fine-tuned`) and its tenant."""
        self.model = "fine-tuned" if is_fine_tuned(model) else model if model in known else "other"
        self.tenant = tenant

    def annotate(self, attributes: Mapping[str, Attribute]) -> None:
        """Facts about the request (who called, how long it queued, where it went), as
        attributes of its server span when its trace is recorded: a span of their own would
        cost a request tens of microseconds each (docs/benchmarks.md)."""
        if self.span is not None:
            self.span.attributes.update(attributes)

    def pass_trace_on(self, headers: MutableMapping[str, str]) -> None:
        """Add the request's trace context to `headers` (to the engine): its recorded server
        span as the engine's parent, or the not-sampled context the engine must follow."""
        if self.trace_headers is not None:
            headers.update(self.trace_headers)

    def on_stream_end(self, callback: StreamEnd) -> None:
        """Have `callback` told what the request's stream relayed, once it is over."""
        if self._stream_ends is None:
            self._stream_ends = [callback]
        else:
            self._stream_ends.append(callback)

    def stream_over(self, relayed: int, total: int | None) -> None:
        """The stream is over: tell each callback once."""
        ends, self._stream_ends = self._stream_ends, None
        for end in ends or ():
            end(relayed, total)


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `x-request-id` when it sent a sane one, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            if 0 < len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
                return given
            break
    return f"{_ID_PREFIX}{next(_ids):x}"


def begin(scope: Scope) -> RequestContext:
    """A new context for the request in `scope`, kept there."""
    context = scope[_SCOPE_KEY] = RequestContext(request_id(scope.get("headers", [])), time.perf_counter())
    return context


def context_of(scope: Scope) -> RequestContext:
    """The request's context; made now if none was (an app without the request metrics middleware)."""
    context: RequestContext | None = scope.get(_SCOPE_KEY)
    return begin(scope) if context is None else context
