"""OpenTelemetry set-up shared by the gateway and our engine: W3C `traceparent` in and out.

Spans are recorded once a tracer provider is installed (`install`): `configure` installs
one that exports over OTLP/HTTP when an endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or
the gateway's `otlp_endpoint`); tests install their own. Without one, no span is begun.

A server that begins traces of its own may decide their sampling itself, before any span
work (`root_sampled`, at the ratio given to `configure` or `sample_roots`): a trace it samples
out then costs it no span at all, only the `traceparent` that tells the next hop not to record
(`unsampled_headers`). The provider's sampler still follows a caller's flag.
"""

import random
from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, Span, SpanContext, TraceFlags, Tracer, TracerProvider

__all__ = [
    "configure",
    "enabled",
    "extract",
    "headers_of",
    "inject",
    "install",
    "propagation_headers",
    "root_sampled",
    "sample_roots",
    "sampled_out",
    "span",
    "unsampled_headers",
]

_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)  # reusable: it holds no state
_installed = False
_root_ratio = 1.0
_propagated: tuple[TextMapPropagator, frozenset[bytes]] | None = None  # the propagator, its header names
_W3C = frozenset({b"traceparent", b"tracestate", b"baggage"})  # OpenTelemetry's default propagators' headers


def install(provider: TracerProvider, root_ratio: float = 1.0) -> None:
    """Record spans with `provider` from now on (once per process, as OpenTelemetry allows),
    and `root_ratio` of the traces begun here (`sample_roots`)."""
    global _installed
    trace.set_tracer_provider(provider)
    sample_roots(root_ratio)
    _installed = True


def sample_roots(ratio: float) -> None:
    """Have `root_sampled` keep `ratio` (0 to 1) of the traces begun here."""
    global _root_ratio
    _root_ratio = ratio


def root_sampled() -> bool:
    """Whether a trace begun here (no caller's trace to follow) is to be recorded. A coin, not
    the trace id: the decision travels with the trace, so no later hop needs to make it again."""
    return _root_ratio >= 1.0 or random.random() < _root_ratio


def unsampled_headers(parent: Context | None = None) -> dict[str, str]:
    """The headers that pass on a new trace this process does not record (the next hop must not
    record it either): a new trace id with the not-sampled flag, and `parent`'s baggage."""
    trace_id, span_id = random.getrandbits(128) or 1, random.getrandbits(64) or 1
    if parent is None and _header_names() == _W3C:  # the usual case, formatted directly
        return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-00"}
    span = NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(0)))
    return headers_of(trace.set_span_in_context(span, parent))


def enabled() -> bool:
    """Whether spans are recorded. OpenTelemetry's no-op path still costs about 8 µs a span
    (context attach and detach, an environment lookup): without a provider none is begun."""
    return _installed


def span(tracer: Tracer, name: str, **options: Any) -> AbstractContextManager[Span]:
    """`tracer.start_as_current_span(name, ...)`, or a do-nothing span when tracing is off or
    the parent's trace is not sampled: the SDK would begin a non-recording span for nothing
    (a sampled-out request then costs what an untraced one does; `inject` still sends the
    parent's context, with its not-sampled flag, downstream)."""
    if not enabled() or sampled_out(options.get("context")):
        return _NO_SPAN
    return tracer.start_as_current_span(name, **options)


def sampled_out(context: Context | None = None) -> bool:
    """Whether the span current in `context` (default: the current context) is in a trace
    whose sampling decision was "not recorded": a caller's `traceparent` flag, or a root this
    process sampled out. Nothing below such a span is recorded (its flag is followed)."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def configure(service: str, endpoint: str | None, sample_ratio: float | None = None) -> None:
    """Export this process's spans to `endpoint` (an OTLP/HTTP collector); nothing when None.

    `sample_ratio`: the share of traces begun here that are recorded, decided by whoever begins
    them with `root_sampled` (a caller's sampled flag is followed); None leaves every root to
    OTEL_TRACES_SAMPLER (default: every trace)."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when exporting
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    # With a ratio, the decision for a root is made before its span is begun (`root_sampled`):
    # the provider records every span it is then asked for, below a sampled parent.
    sampler = None if sample_ratio is None else ParentBased(ALWAYS_ON)
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    install(provider, 1.0 if sample_ratio is None else sample_ratio)


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from its `traceparent` (an empty context when none)."""
    return propagate.extract(headers)


def propagation_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Of an ASGI request's raw headers, those the propagators read (`traceparent`, ...), for
    `extract`: empty for a caller that does not trace. Of a header sent twice, the first counts."""
    names = _header_names()
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in names:
            carrier.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return carrier


def _header_names() -> frozenset[bytes]:
    """The headers the global propagator reads, as ASGI spells them (found again if it changes)."""
    global _propagated
    propagator = propagate.get_global_textmap()
    if _propagated is None or _propagated[0] is not propagator:
        _propagated = (propagator, frozenset(field.lower().encode("latin-1") for field in propagator.fields))
    return _propagated[1]


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers."""
    if enabled():
        propagate.inject(headers)


def headers_of(context: Context) -> dict[str, str]:
    """The headers that pass `context` on (its span's `traceparent`, its baggage, ...)."""
    headers: dict[str, str] = {}
    propagate.inject(headers, context=context)
    return headers
