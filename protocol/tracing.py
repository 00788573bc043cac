"""OpenTelemetry set-up shared by the gateway and our engine: W3C `traceparent` in and out.

Spans are recorded once a tracer provider is installed (`install`): `configure` installs
one that exports over OTLP/HTTP when an endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or
the gateway's `otlp_endpoint`); tests install their own. Without one, no span is begun.
"""

from collections.abc import Iterable, Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import INVALID_SPAN, Span, Tracer, TracerProvider

__all__ = ["annotate", "configure", "enabled", "extract", "extract_asgi", "inject", "install", "sampled_out", "span"]

_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)  # reusable: it holds no state
_installed = False
_EMPTY = Context()
_propagated: tuple[TextMapPropagator, frozenset[bytes]] | None = None  # the propagator, its header names


def install(provider: TracerProvider) -> None:
    """Record spans with `provider` from now on (once per process, as OpenTelemetry allows)."""
    global _installed
    trace.set_tracer_provider(provider)
    _installed = True


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


def annotate(attributes: Mapping[str, str | int | float | bool]) -> None:
    """Add `attributes` to the current span when it is recorded. A fact about the request (who
    called, how long it queued) is an attribute of the span that covers it, not a span of its
    own: each recorded span costs a request tens of microseconds (docs/benchmarks.md)."""
    if not _installed:
        return
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes(attributes)


def sampled_out(context: Context | None = None) -> bool:
    """Whether the span current in `context` (default: the current context) is in a trace
    whose sampling decision was "not recorded": a caller's `traceparent` flag, or a root this
    process sampled out. Nothing below such a span is recorded (its flag is followed)."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def configure(service: str, endpoint: str | None, sample_ratio: float | None = None) -> None:
    """Export this process's spans to `endpoint` (an OTLP/HTTP collector); nothing when None.

    `sample_ratio`: the share of traces begun here that are recorded (a caller's sampled
    flag is followed); None leaves it to OTEL_TRACES_SAMPLER (default: every trace)."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when exporting
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    sampler = None if sample_ratio is None else ParentBased(TraceIdRatioBased(sample_ratio))
    provider = SdkTracerProvider(resource=Resource.create({"service.name": service}), sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    install(provider)


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from its `traceparent` (an empty context when none)."""
    return propagate.extract(headers)


def extract_asgi(headers: Iterable[tuple[bytes, bytes]]) -> Context:
    """`extract` from an ASGI request's raw headers: an empty context, nothing parsed, when
    none of the propagators' headers is there (a caller that does not trace). Of a header
    sent twice, the first counts."""
    names = _header_names()
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in names:
            carrier.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return propagate.extract(carrier) if carrier else _EMPTY


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
