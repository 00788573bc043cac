"""Traces (app/observability/tracing.py's server span, protocol/tracing.py's helpers), recorded
in memory.

The server span around a small app: opened only on the generating routes of a sampled trace,
what the request's context annotates, open to a stream's last byte; a caller's unsampled trace
and a sampled-out root are passed on with no span and nothing made current. Then a whole
gateway in process over a counting engine: one span a request, continuing the client's
`traceparent`, with what authentication, admission and routing decided as its attributes (a
failed attempt as an event), the engine's parent; and our engine continuing it.

OpenTelemetry takes one tracer provider per process: `recorder()` installs the one these tests
share, with a sampler a test may swap (`sampling`)."""

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceState
from opentelemetry.util.types import Attributes

from app.auth.__main__ import mint
from app.context import RequestContext, context_of
from app.observability.tracing import TraceRequests
from app.settings import GatewaySettings
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import CountingEngine
from harness.inprocess import gateway_in_process, pool_settings
from protocol import tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
UNSAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-00"
CHAT = "/v1/chat/completions"
tracer = trace.get_tracer("test")


class _Swappable(Sampler):
    """The provider's sampler, replaceable while the provider lives (its tracers keep this one)."""

    def __init__(self) -> None:
        self.inner: Sampler = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return self.inner.get_description()


_SAMPLER = _Swappable()


@functools.cache
def recorder() -> InMemorySpanExporter:
    """This process's provider (installed at the first call), recording every span in memory."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=_SAMPLER)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracing.install(provider)
    return memory


@contextmanager
def sampling(sampler: Sampler) -> Iterator[None]:
    """Roots are sampled by `sampler` for the duration (then every one again)."""
    _SAMPLER.inner = sampler
    try:
        yield
    finally:
        _SAMPLER.inner = ParentBased(ALWAYS_ON)


@pytest.fixture(scope="module", autouse=True)
def _recording() -> Iterator[None]:
    """Spans are recorded while this module runs; the tests after it in the process run as
    without a provider (OpenTelemetry keeps the one installed, but `tracing.enabled()` is off)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tracing, "_installed", tracing.enabled())  # put back as it was on leaving
        patch.setattr(tracing, "_root_ratio", 1.0)
        recorder()
        yield


@pytest.fixture
def roots_sampled_out() -> Iterator[None]:
    """The gateway's own decision keeps no trace it begins."""
    tracing.sample_roots(0.0)
    try:
        yield
    finally:
        tracing.sample_roots(1.0)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    memory = recorder()
    memory.clear()
    return memory


class _Seen:
    """What the app's handlers saw of the trace: the headers passed on, the span current, the
    request's context."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}
        self.current: trace.Span = trace.INVALID_SPAN
        self.context: RequestContext | None = None
        self.last_event_ns = 0


def _app(seen: _Seen) -> FastAPI:
    """Routes that annotate the request's trace and pass it on, as the gateway does."""
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    app.add_middleware(TraceRequests)

    async def answer(request: Request) -> JSONResponse:
        seen.current = trace.get_current_span()
        seen.context = context = context_of(request.scope)
        context.annotate({"test.handled": True})
        context.pass_trace_on(seen.sent)
        status = int(request.query_params.get("status", "200"))
        if status == 0:
            raise RuntimeError("a bug")
        return JSONResponse({"ok": True}, status_code=status)

    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for n in range(3):
                await asyncio.sleep(0.1)
                context_of(request.scope).annotate({"test.events": n + 1})
                seen.last_event_ns = time.time_ns()
                yield b"data: x\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def ops() -> JSONResponse:
        seen.current = trace.get_current_span()
        tracing.inject(seen.sent)
        return JSONResponse({"ok": True})

    app.add_api_route(CHAT, answer, methods=["POST"])
    app.add_api_route("/v1/completions", stream, methods=["POST"])
    app.add_api_route("/predict", answer, methods=["POST"])
    for path in ("/health", "/metrics", "/v1/models"):
        app.add_api_route(path, ops, methods=["GET"])
    return app


async def _call(seen: _Seen, method: str, path: str, traceparent: str | None = None) -> httpx.Response:
    headers = {"traceparent": traceparent} if traceparent else {}
    transport = httpx.ASGITransport(app=_app(seen), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.request(method, path, headers=headers)


def _only(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> ReadableSpan:
    [span] = [span for span in spans if span.kind == kind]
    return span


async def test_a_sampled_caller_gets_one_server_span_that_the_request_annotates(
    exporter: InMemorySpanExporter,
) -> None:
    seen = _Seen()
    assert (await _call(seen, "POST", CHAT, SAMPLED)).status_code == 200
    spans = exporter.get_finished_spans()
    server = _only(spans, SpanKind.SERVER)
    assert server.name == f"POST {CHAT}"
    assert f"{server.context.trace_id:032x}" == TRACE_ID
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CLIENT_SPAN
    assert server.attributes is not None
    assert dict(server.attributes) == {
        "http.request.method": "POST",
        "url.path": CHAT,
        "url.scheme": "http",
        "http.route": CHAT,
        "test.handled": True,
        "http.response.status_code": 200,
    }
    assert server.status.status_code is StatusCode.UNSET
    assert len(spans) == 1
    assert seen.current is trace.INVALID_SPAN  # nothing made current: the request's context says
    assert seen.context is not None
    assert seen.context.trace is not None
    assert seen.context.trace.span.get_span_context() == server.context
    assert seen.sent["traceparent"] == f"00-{TRACE_ID}-{server.context.span_id:016x}-01"


async def test_a_streams_server_span_lasts_until_its_last_byte(exporter: InMemorySpanExporter) -> None:
    seen = _Seen()
    response = await _call(seen, "POST", "/v1/completions", SAMPLED)
    assert response.status_code == 200
    assert response.content == b"data: x\n\n" * 3
    spans = exporter.get_finished_spans()
    server = _only(spans, SpanKind.SERVER)
    assert server.name == "POST /v1/completions"
    assert server.attributes is not None
    assert server.attributes["test.events"] == 3  # annotated until the last event
    assert server.start_time is not None
    assert server.end_time is not None
    assert server.end_time >= seen.last_event_ns
    assert (server.end_time - server.start_time) / 1e9 >= 0.25  # three events 0.1 s apart


async def test_a_caller_that_did_not_sample_costs_no_span_and_is_passed_on(exporter: InMemorySpanExporter) -> None:
    seen = _Seen()
    assert (await _call(seen, "POST", CHAT, UNSAMPLED)).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert seen.current is trace.INVALID_SPAN  # nothing made current: nothing below asks
    assert seen.context is not None
    assert seen.context.trace is None
    assert seen.sent == {"traceparent": UNSAMPLED}  # passed on as it came


@pytest.mark.usefixtures("roots_sampled_out")
async def test_a_root_sampled_out_costs_no_span_and_tells_the_engine(exporter: InMemorySpanExporter) -> None:
    sent = set()
    for _ in range(3):
        seen = _Seen()
        assert (await _call(seen, "POST", "/predict")).status_code == 200
        assert seen.current is trace.INVALID_SPAN
        # The engine is told not to record: a trace id of its own, the not-sampled flag.
        version, trace_id, span_id, flags = seen.sent["traceparent"].split("-")
        assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "00")
        assert int(trace_id, 16)
        assert int(span_id, 16)
        sent.add(trace_id)
    assert len(sent) == 3
    assert exporter.get_finished_spans() == ()


@pytest.mark.usefixtures("roots_sampled_out")
async def test_a_sampled_out_root_keeps_the_callers_baggage(exporter: InMemorySpanExporter) -> None:
    seen = _Seen()
    transport = httpx.ASGITransport(app=_app(seen))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.post(CHAT, headers={"baggage": "tenant=t1"})).status_code == 200
    assert seen.sent["baggage"] == "tenant=t1"
    assert seen.sent["traceparent"].endswith("-00")
    assert exporter.get_finished_spans() == ()


def test_roots_are_sampled_at_the_given_ratio() -> None:
    try:
        tracing.sample_roots(0.25)
        kept = sum(tracing.root_sampled() for _ in range(20_000))
    finally:
        tracing.sample_roots(1.0)
    assert 4_500 < kept < 5_500  # 5,000 expected; the bounds are 8 standard deviations wide
    assert all(tracing.root_sampled() for _ in range(100))


async def test_a_span_the_providers_sampler_refuses_is_followed_too(exporter: InMemorySpanExporter) -> None:
    seen = _Seen()
    with sampling(ParentBased(TraceIdRatioBased(0))):
        assert (await _call(seen, "POST", "/predict")).status_code == 200
    assert exporter.get_finished_spans() == ()
    assert seen.current is trace.INVALID_SPAN
    assert int(seen.sent["traceparent"].rsplit("-", 1)[1], 16) & 1 == 0  # not sampled (0x02: a random id)


async def test_a_root_the_sampler_keeps_is_a_trace_of_its_own(exporter: InMemorySpanExporter) -> None:
    seen = _Seen()
    assert (await _call(seen, "POST", "/predict")).status_code == 200
    server = _only(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.name == "POST /predict"
    assert server.parent is None
    assert f"{server.context.trace_id:032x}" != TRACE_ID


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models"])
async def test_other_routes_are_never_traced(exporter: InMemorySpanExporter, path: str) -> None:
    seen = _Seen()
    assert (await _call(seen, "GET", path, SAMPLED)).status_code == 200
    assert seen.current is trace.INVALID_SPAN  # the caller's context is not even made current
    assert seen.sent == {}
    assert exporter.get_finished_spans() == ()


async def test_without_a_provider_nothing_is_traced(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracing, "enabled", lambda: False)
    seen = _Seen()
    assert (await _call(seen, "POST", CHAT, SAMPLED)).status_code == 200
    assert seen.current is trace.INVALID_SPAN
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize(("status", "error"), [(503, "503"), (0, "RuntimeError"), (429, None)])
async def test_a_server_error_marks_the_span(exporter: InMemorySpanExporter, status: int, error: str | None) -> None:
    response = await _call(_Seen(), "POST", f"{CHAT}?status={status}", SAMPLED)
    assert response.status_code == (status or 500)
    server = _only(exporter.get_finished_spans(), SpanKind.SERVER)
    assert server.attributes is not None
    assert server.attributes.get("error.type") == error
    assert server.status.status_code is (StatusCode.UNSET if error is None else StatusCode.ERROR)
    if status:
        assert server.attributes["http.response.status_code"] == status


def test_the_callers_context_is_read_from_the_raw_headers() -> None:
    headers = [(b"host", b"gateway"), (b"traceparent", SAMPLED.encode()), (b"traceparent", UNSAMPLED.encode())]
    carried = tracing.propagation_headers([*headers, (b"baggage", b"tenant=t1")])
    assert carried == {"traceparent": SAMPLED, "baggage": "tenant=t1"}  # of a header sent twice, the first
    context = tracing.extract(carried)
    parent = trace.get_current_span(context).get_span_context()
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}", parent.trace_flags.sampled) == (
        TRACE_ID,
        CLIENT_SPAN,
        True,  # of a header sent twice, the first
    )
    assert baggage.get_baggage("tenant", context) == "t1"
    assert tracing.propagation_headers([(b"host", b"gateway"), (b"x-traceparent", SAMPLED.encode())]) == {}


def test_no_span_is_begun_below_a_parent_that_is_not_sampled(exporter: InMemorySpanExporter) -> None:
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(int(TRACE_ID, 16), int(CLIENT_SPAN, 16), is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    with trace.use_span(unsampled), tracing.span(tracer, "admission") as span:
        assert span is trace.INVALID_SPAN
    with tracing.span(tracer, "root") as span:  # no parent: the sampler decides (here: recorded)
        assert span.is_recording()


# a whole gateway in process, over a counting engine

ENGINE = "http://engine"


@asynccontextmanager
async def _serving(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, CountingEngine]]:
    """A gateway over one counting engine, with `settings` (authentication off unless they say otherwise)."""
    engine = CountingEngine()
    async with gateway_in_process(_settings(**settings), {ENGINE: engine.app}) as gateway:
        yield gateway.client, engine


def _settings(**settings: Any) -> GatewaySettings:
    return pool_settings([ENGINE], **settings)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def test_the_gateway_span_tree_continues_the_client_trace(exporter: InMemorySpanExporter) -> None:
    async with _serving(pool={"region": "eu"}, region="eu") as (client, engine):
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": "t1"}
        headers = {"traceparent": SAMPLED, "x-request-id": "traced-1"}
        assert (await client.post(CHAT, json=body, headers=headers)).status_code == 200
    spans = exporter.get_finished_spans()
    [root] = _by_name(spans, f"POST {CHAT}")
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert root.attributes is not None
    # One span a request: who called, how long it queued and where it went are its attributes.
    assert [span.name for span in spans] == [f"POST {CHAT}"]
    assert root.attributes["switchyard.queue_wait_s"] == pytest.approx(0, abs=0.5)
    assert {key: value for key, value in root.attributes.items() if key != "switchyard.queue_wait_s"} == {
        "http.request.method": "POST",
        "http.route": CHAT,
        "url.path": CHAT,
        "url.scheme": "http",
        "enduser.id": "t1",  # authentication off: the `user` field, the tenant
        "switchyard.replica": "p-0",
        "switchyard.region": "eu",
        "switchyard.reason": "affinity",  # the key's home: no `switchyard.home`, first attempt: no number
        "http.response.status_code": 200,
    }
    assert root.events == ()
    # The engine got the server span as its parent, in the client's trace.
    assert engine.traceparents["traced-1"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"


async def test_a_failed_attempt_is_an_event_of_the_request_span(exporter: InMemorySpanExporter) -> None:
    engines = {"http://engine-a": CountingEngine(name="a"), "http://engine-b": CountingEngine(name="b")}
    async with gateway_in_process(pool_settings(list(engines)), {u: e.app for u, e in engines.items()}) as gateway:
        engines["http://engine-a"].behave(fail_times=1000, fail_status=503)
        exporter.clear()
        for user in range(8):  # keys spread over both replicas: some go to the failing one first
            body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": f"u{user}"}
            response = await gateway.client.post(CHAT, json=body, headers={"traceparent": SAMPLED})
            assert response.status_code == 200
    spans = _by_name(exporter.get_finished_spans(), f"POST {CHAT}")
    retried = [span for span in spans if span.events]
    assert retried
    assert len(retried) < len(spans)
    for span in retried:
        [failed] = span.events
        assert failed.name == "switchyard.attempt_failed"
        assert failed.attributes is not None
        assert (failed.attributes["switchyard.replica"], failed.attributes["error.type"]) == ("p-0", "overloaded")
        assert "switchyard.attempt" not in failed.attributes  # the first attempt's decision
        assert span.attributes is not None
        assert (span.attributes["switchyard.replica"], span.attributes["switchyard.attempt"]) == ("p-1", 2)
        assert span.status.status_code is StatusCode.UNSET


async def test_predict_continues_the_client_trace_to_the_engine(exporter: InMemorySpanExporter) -> None:
    async with _serving() as (client, engine):
        exporter.clear()
        headers = {"traceparent": SAMPLED, "x-request-id": "predicted-1"}
        assert (await client.post("/predict", json={"text": "hi"}, headers=headers)).status_code == 200
    spans = exporter.get_finished_spans()
    [root] = _by_name(spans, "POST /predict")
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert engine.traceparents["predicted-1"] == f"00-{TRACE_ID}-{root.context.span_id:016x}-01"


async def test_a_streams_span_lasts_until_its_last_event(exporter: InMemorySpanExporter) -> None:
    async with _serving() as (client, engine):
        engine.behave(chunk_delay_s=0.1)
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        assert (await client.post(CHAT, json=body)).status_code == 200
    [root] = _by_name(exporter.get_finished_spans(), f"POST {CHAT}")
    assert root.attributes is not None
    assert root.attributes["switchyard.events"] == 4
    assert root.start_time is not None
    assert root.end_time is not None
    assert (root.end_time - root.start_time) / 1e9 >= 0.35  # four events 0.1 s apart


async def test_a_trace_the_caller_did_not_sample_costs_no_spans(exporter: InMemorySpanExporter) -> None:
    async with _serving() as (client, engine):
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"traceparent": UNSAMPLED, "x-request-id": "unsampled-1"}
        assert (await client.post(CHAT, json=body, headers=headers)).status_code == 200
    assert exporter.get_finished_spans() == ()
    # The engine still learns the trace, and that it is not sampled.
    sent = engine.traceparents["unsampled-1"]
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")


async def test_probes_scrapes_and_the_model_list_are_never_traced(exporter: InMemorySpanExporter) -> None:
    async with _serving() as (client, _):
        exporter.clear()
        for path in ("/health", "/ready", "/metrics", "/v1/models"):
            assert (await client.get(path, headers={"traceparent": SAMPLED})).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_without_a_traceparent_a_request_starts_its_own_trace(exporter: InMemorySpanExporter) -> None:
    async with _serving() as (client, _):
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post(CHAT, json=body)).status_code == 200
    [root] = _by_name(exporter.get_finished_spans(), f"POST {CHAT}")
    assert root.parent is None
    assert f"{root.context.trace_id:032x}" != TRACE_ID


async def test_the_server_span_names_the_authenticated_caller(exporter: InMemorySpanExporter, tmp_path: Path) -> None:
    builtin = {"auth_mode": "builtin", "data_dir": tmp_path}
    async with _serving(**builtin) as (client, _):
        # signed with the key the built-in issuer made at start
        token = mint(_settings(**builtin), subject="alice", scopes=["chat"], ttl_s=60)
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post(CHAT, json=body, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200
    [root] = _by_name(exporter.get_finished_spans(), f"POST {CHAT}")
    assert root.attributes is not None
    assert root.attributes["enduser.id"] == "alice"


async def test_our_engine_continues_the_trace(exporter: InMemorySpanExporter) -> None:
    transport = httpx.ASGITransport(app=create_engine_app(FakeEngine("Hello.", max_model_len=64)))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post(CHAT, json=body, headers={"traceparent": SAMPLED})
    assert response.status_code == 200
    [span] = _by_name(exporter.get_finished_spans(), "engine.chat")
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.kind == trace.SpanKind.SERVER
