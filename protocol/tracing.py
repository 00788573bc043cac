"""OpenTelemetry set-up shared by the gateway and our engine: W3C `traceparent` in and out.

Spans are recorded once a tracer provider is installed: `configure` installs one that
exports over OTLP/HTTP when an endpoint is given (OTEL_EXPORTER_OTLP_ENDPOINT or the
gateway's `otlp_endpoint`); tests install their own. Without one, OpenTelemetry's no-op
tracer costs next to nothing.
"""

from collections.abc import Mapping, MutableMapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context

__all__ = ["configure", "extract", "inject"]


def configure(service: str, endpoint: str | None) -> None:
    """Export this process's spans to `endpoint` (an OTLP/HTTP collector); nothing when None."""
    if not endpoint:
        return
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # only when exporting
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)


def extract(headers: Mapping[str, str]) -> Context:
    """The caller's trace context from its `traceparent` (an empty context when none)."""
    return propagate.extract(headers)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`) to outgoing headers."""
    propagate.inject(headers)
