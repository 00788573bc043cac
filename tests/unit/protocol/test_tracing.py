"""Our engine's spans (protocol/tracing.py over OpenTelemetry's SDK), recorded in memory: a span
below a caller's sampled `traceparent`, none below one that is not sampled.

OpenTelemetry takes one tracer provider per process: this module installs one for its tests and
leaves `tracing.enabled()` as it found it for the tests after it."""

import functools
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from protocol import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
tracer = trace.get_tracer("test")


@functools.cache
def _recorder() -> InMemorySpanExporter:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "_installed", False)  # the fixture decides when tracing is on
        tracing.install(provider)
    return memory


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    with pytest.MonkeyPatch.context() as patch:
        memory = _recorder()  # installed once a process; on for this test, off again after it
        patch.setattr(tracing, "_installed", True)
        memory.clear()
        yield memory


def test_no_span_is_begun_below_a_parent_that_is_not_sampled(exporter: InMemorySpanExporter) -> None:
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(int(TRACE_ID, 16), int(CLIENT_SPAN, 16), is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    with trace.use_span(unsampled), tracing.span(tracer, "admission") as span:
        assert span is trace.INVALID_SPAN
    with tracing.span(tracer, "root") as span:  # no parent: the sampler decides (here: recorded)
        assert span.is_recording()
    assert [span.name for span in exporter.get_finished_spans()] == ["root"]


@pytest.mark.parametrize(("flags", "recorded"), [("01", True), ("00", False)])
async def test_our_engine_continues_the_trace(exporter: InMemorySpanExporter, flags: str, recorded: bool) -> None:
    transport = httpx.ASGITransport(app=create_engine_app(FakeEngine("Hello.", max_model_len=64)))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-{flags}"
        response = await client.post("/v1/chat/completions", json=body, headers={"traceparent": traceparent})
    assert response.status_code == 200
    spans = [span for span in exporter.get_finished_spans() if span.name == "engine.chat"]
    if not recorded:
        assert spans == []
        return
    [span] = spans
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.kind == trace.SpanKind.SERVER


def test_without_a_provider_no_span_is_begun(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "_installed", False)
    with tracing.span(tracer, "anything") as span:
        assert span is trace.INVALID_SPAN
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}
