"""OpenTelemetry set-up for our engine: W3C `traceparent` in and out, spans through the SDK.

Spans are recorded once a tracer provider is installed (`install`): `configure` installs
one that exports over OTLP/HTTP when an endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT); tests
install their own. Without one, no span is begun. (The gateway keeps its one server span a
request itself, without the SDK: app/observability/tracing.py.)
"""

from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, Tracer, TracerProvider

__all__ = ["configure", "enabled", "extract", "headers_of", "inject", "install", "sampled_out", "span"]

_NO_SPAN: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)  # reusable: it holds no state
_installed = False


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


def sampled_out(context: Context | None = None) -> bool:
    """Whether the span current in `context` (default: the current context) is in a trace
    whose sampling decision was "not recorded" (a caller's `traceparent` flag). Nothing below
    such a span is recorded (its flag is followed)."""
    parent = trace.get_current_span(context).get_span_context()
    return parent.is_valid and not parent.trace_flags.sampled


def configure(service: str, endpoint: str | None) -> None:
    """Export this process's spans to `endpoint` (an OTLP/HTTP collector); nothing when None.
    Traces begun here are sampled by OTEL_TRACES_SAMPLER (default: all); a caller's flag is
    followed."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when exporting
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = SdkTracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    install(provider)


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from its `traceparent` (an empty context when none)."""
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers."""
    if enabled():
        propagate.inject(headers)


def headers_of(context: Context) -> dict[str, str]:
    """The headers that pass `context` on (its span's `traceparent`, its baggage, ...)."""
    headers: dict[str, str] = {}
    propagate.inject(headers, context=context)
    return headers
