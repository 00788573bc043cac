"""Micro-benchmark: what the gateway's observability costs a request, part by part, in µs.

    python -m benchmarks.request_costs [--number 100000]

In one process with no tracer provider installed (as the gateway runs without a
collector): the request-metrics middleware around a bare ASGI app against the bare app;
the metric updates of one answered request (count, duration, in progress, generation
latency and tokens with the usage scan); three spans through `protocol.tracing.span` (as our
engine begins them) against OpenTelemetry's own no-op path, with `traceparent` injection.
Then the idempotency fingerprint of a chat body (orjson, and the json module it replaced).
Then the server span's middleware around a bare app: for a request whose trace the gateway
samples out (its decision, and the not-sampled `traceparent` made for the engine), against what
the SDK's own sampler costs for the same decision; and for a recorded request (its span with
the gateway's ten attributes, encoded as the OTLP exporter does), against the same span made
through OpenTelemetry's SDK and encoded by its OTLP encoder.
"""

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Callable

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from starlette.types import Message, Receive, Scope, Send

from app.context import RequestContext, context_of
from app.observability.export import MemorySpans
from app.observability.metrics import GatewayMetrics, RequestMetrics
from app.observability.tracing import TraceRequests
from app.reliability.idempotency import fingerprint
from protocol import tracing
from protocol.otlp import ServerSpan, encode_span

ROUTE = "/v1/chat/completions"
CHAT_BODY = b'{"model": "instant", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}'
BODY = b'{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":16,"total_tokens":21}}'


async def _bare(scope: Scope, receive: Receive, send: Send) -> None:
    context_of(scope).label("m", frozenset({"m"}), "t")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-request-id", b"abc")]})
    await send({"type": "http.response.body", "body": BODY})


async def _send(message: Message) -> None:
    return None


async def _receive() -> Message:
    return {"type": "http.request", "body": b""}


async def _per_call_us(app: Callable[[Scope, Receive, Send], object], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        scope = {"type": "http", "method": "POST", "path": ROUTE, "headers": []}
        await app(scope, _receive, _send)  # type: ignore[misc]
    return (time.perf_counter() - started) / number * 1e6


def _timed_us(work: Callable[[], object], number: int) -> float:
    started = time.perf_counter()
    for _ in range(number):
        work()
    return (time.perf_counter() - started) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=100_000)
    args = parser.parse_args()
    metrics = GatewayMetrics()
    bare = asyncio.run(_per_call_us(_bare, args.number))
    wrapped = asyncio.run(_per_call_us(RequestMetrics(_bare, metrics), args.number))
    context = RequestContext("r", time.perf_counter())
    context.label("m", frozenset({"m"}), "t")

    def updates() -> None:
        metrics.in_progress(ROUTE).inc()
        metrics.in_progress(ROUTE).dec()
        metrics.requests(ROUTE, "m", "2xx").inc()
        metrics.duration(ROUTE, "m", "2xx").observe(0.012)
        metrics.answered(context, "pool", "region", BODY, 0.01)

    tracer = trace.get_tracer("bench")

    def our_spans() -> None:
        headers: dict[str, str] = {}
        for name in ("admission", "route", "upstream"):
            with tracing.span(tracer, name):
                pass
        tracing.inject(headers)

    def otel_noop_spans() -> None:
        headers: dict[str, str] = {}
        for name in ("admission", "route", "upstream"):
            with tracer.start_as_current_span(name):
                pass
        propagate.inject(headers)

    print("| part | µs a request |")
    print("|---|---|")
    print(f"| bare ASGI app | {bare:.2f} |")
    print(f"| the same inside the request-metrics middleware | {wrapped:.2f} (+{wrapped - bare:.2f}) |")
    print(f"| metric updates of one answered request | {_timed_us(updates, args.number):.2f} |")
    print(f"| three spans and injection, OpenTelemetry's no-op path | {_timed_us(otel_noop_spans, args.number):.2f} |")
    print(f"| the same through protocol.tracing (no provider: no span) | {_timed_us(our_spans, args.number):.2f} |")

    def json_fingerprint() -> None:
        canonical = json.dumps(json.loads(CHAT_BODY), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        hashlib.sha256(canonical.encode()).hexdigest()

    print(f"| idempotency fingerprint of a chat body | {_timed_us(lambda: fingerprint(CHAT_BODY), args.number):.2f} |")
    print(f"| the same with the json module | {_timed_us(json_fingerprint, args.number):.2f} |")

    server = TraceRequests(_pass_on, MemorySpans(), ratio=0.0)
    traced = asyncio.run(_per_call_us(server, args.number))
    passed_on = asyncio.run(_per_call_us(_pass_on, args.number))
    print(f"| a root sampled out by the gateway: its decision, the engine's `traceparent` | {traced - passed_on:.2f} |")
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    tracing.install(provider)
    sdk = provider.get_tracer("bench")

    def sdk_root() -> None:
        span = sdk.start_span("POST /v1/chat/completions", context=Context())
        tracing.headers_of(trace.set_span_in_context(span))

    print(f"| the same decided by the SDK's sampler (a non-recording span) | {_timed_us(sdk_root, args.number):.2f} |")
    recorded = asyncio.run(_per_call_us(TraceRequests(_annotating, _EncodeOnly(), ratio=1.0), args.number))
    annotating = asyncio.run(_per_call_us(_annotating, args.number))
    print(f"| one recorded request: its span, ten attributes, OTLP-encoded for export | {recorded - annotating:.2f} |")
    recording = TracerProvider().get_tracer("bench")

    def sdk_recorded() -> None:
        span = recording.start_span("POST /v1/chat/completions", context=Context(), attributes=START)
        tracing.headers_of(trace.set_span_in_context(span))
        span.set_attributes(LATER)
        span.end()
        encode_spans([span])  # type: ignore[list-item]  # an SDK span is a readable span

    cost = _timed_us(sdk_recorded, args.number)
    print(f"| the same through OpenTelemetry's SDK and its OTLP encoder | {cost:.2f} |")


class _EncodeOnly:
    """A span sink that encodes each span as the OTLP exporter does, and keeps nothing."""

    def export(self, span: ServerSpan) -> None:
        encode_span(span)

    def close(self) -> None:
        return None


START = {"http.request.method": "POST", "http.route": ROUTE, "url.path": ROUTE, "url.scheme": "http"}
LATER: dict[str, str | int | float] = {"enduser.id": "t", "switchyard.queue_wait_s": 0.0001}
LATER |= {"switchyard.replica": "p-0", "switchyard.region": "eu", "switchyard.reason": "affinity"}


async def _annotating(scope: Scope, receive: Receive, send: Send) -> None:
    """The bare app, annotating the request's span as the gateway does, and passing it on."""
    context = context_of(scope)
    context.annotate(LATER)
    context.pass_trace_on({})
    await _bare(scope, receive, send)


async def _pass_on(scope: Scope, receive: Receive, send: Send) -> None:
    context_of(scope).pass_trace_on({})


if __name__ == "__main__":
    main()
