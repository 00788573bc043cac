"""The gateway's server span (app/observability/tracing.py), kept in memory (`MemorySpans`).

First around a small app: opened only on the generating routes of a sampled trace, what the
request's context annotates, open to a stream's last byte; a caller's unsampled trace and a
sampled-out root are passed on with no span; a malformed `traceparent` starts a new trace.
Then a whole gateway in process over a counting engine: one span a request, continuing the
client's `traceparent`, with what authentication, admission and routing decided as its
attributes (a failed attempt as an event), the engine's parent."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from app.auth.keys import mint
from app.context import RequestContext, context_of
from app.observability.export import MemorySpans
from app.observability.tracing import TraceRequests, parse_traceparent
from app.settings import GatewaySettings
from harness.counting_engine import CountingEngine
from harness.inprocess import gateway_in_process, pool_settings
from protocol.otlp import ServerSpan

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
UNSAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-00"
CHAT = "/v1/chat/completions"


class _Seen:
    """What the app's handlers saw of the trace: the headers passed on, the request's context."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}
        self.context: RequestContext | None = None
        self.last_event_ns = 0


def _app(seen: _Seen, spans: MemorySpans, ratio: float = 1.0) -> FastAPI:
    """Routes that annotate the request's trace and pass it on, as the gateway does."""
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    app.add_middleware(TraceRequests, spans=spans, ratio=ratio)

    async def answer(request: Request) -> JSONResponse:
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

    async def ops(request: Request) -> JSONResponse:
        context_of(request.scope).pass_trace_on(seen.sent)
        return JSONResponse({"ok": True})

    app.add_api_route(CHAT, answer, methods=["POST"])
    app.add_api_route("/v1/completions", stream, methods=["POST"])
    app.add_api_route("/predict", answer, methods=["POST"])
    for path in ("/health", "/metrics", "/v1/models"):
        app.add_api_route(path, ops, methods=["GET"])
    return app


async def _call(
    seen: _Seen, spans: MemorySpans, method: str, path: str, traceparent: str | None = None, **headers: str
) -> httpx.Response:
    if traceparent:
        headers["traceparent"] = traceparent
    transport = httpx.ASGITransport(app=_app(seen, spans), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        return await client.request(method, path, headers=headers)


async def test_a_sampled_caller_gets_one_server_span_that_the_request_annotates() -> None:
    seen, spans = _Seen(), MemorySpans()
    assert (await _call(seen, spans, "POST", CHAT, SAMPLED, tracestate="vendor=1", baggage="k=v")).status_code == 200
    [server] = spans.spans
    assert server.name == f"POST {CHAT}"
    assert f"{server.trace_id:032x}" == TRACE_ID
    assert f"{server.parent_id:016x}" == CLIENT_SPAN
    assert server.span_id not in (0, int(CLIENT_SPAN, 16))
    assert server.trace_state == "vendor=1"
    assert server.attributes == {
        "http.request.method": "POST",
        "url.path": CHAT,
        "url.scheme": "http",
        "http.route": CHAT,
        "test.handled": True,
        "http.response.status_code": 200,
    }
    assert not server.error
    assert server.events == []
    assert 0 < server.start_ns <= server.end_ns
    assert seen.context is not None
    assert seen.context.span is server
    # The engine's parent is the server span, in the caller's trace, with its state and baggage.
    assert seen.sent == {
        "traceparent": f"00-{TRACE_ID}-{server.span_id:016x}-01",
        "tracestate": "vendor=1",
        "baggage": "k=v",
    }


async def test_a_streams_server_span_lasts_until_its_last_byte() -> None:
    seen, spans = _Seen(), MemorySpans()
    response = await _call(seen, spans, "POST", "/v1/completions", SAMPLED)
    assert response.status_code == 200
    assert response.content == b"data: x\n\n" * 3
    [server] = spans.spans
    assert server.name == "POST /v1/completions"
    assert server.attributes["test.events"] == 3  # annotated until the last event
    assert server.end_ns >= seen.last_event_ns
    assert (server.end_ns - server.start_ns) / 1e9 >= 0.25  # three events 0.1 s apart


async def test_a_caller_that_did_not_sample_costs_no_span_and_is_passed_on() -> None:
    seen, spans = _Seen(), MemorySpans()
    response = await _call(seen, spans, "POST", CHAT, UNSAMPLED, tracestate="vendor=1", baggage="k=v")
    assert response.status_code == 200
    assert spans.spans == []
    assert seen.context is not None
    assert seen.context.span is None
    assert seen.sent == {"traceparent": UNSAMPLED, "tracestate": "vendor=1", "baggage": "k=v"}  # as it came


async def test_a_root_sampled_out_costs_no_span_and_tells_the_engine() -> None:
    spans, sent = MemorySpans(), set()
    for _ in range(3):
        seen = _Seen()
        transport = httpx.ASGITransport(app=_app(seen, spans, ratio=0.0))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            headers = {"baggage": "tenant=t1", "tracestate": "vendor=1"}
            assert (await client.post("/predict", headers=headers)).status_code == 200
        # The engine is told not to record: a trace id of its own, the not-sampled flag; the
        # caller's baggage, not the state of a trace that is not the caller's.
        assert set(seen.sent) == {"traceparent", "baggage"}
        assert seen.sent["baggage"] == "tenant=t1"
        version, trace_id, span_id, flags = seen.sent["traceparent"].split("-")
        assert (version, len(trace_id), len(span_id), flags) == ("00", 32, 16, "00")
        assert int(trace_id, 16)
        assert int(span_id, 16)
        sent.add(trace_id)
    assert len(sent) == 3
    assert spans.spans == []


async def test_roots_are_sampled_at_the_given_ratio() -> None:
    spans = MemorySpans()

    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    traced = TraceRequests(bare, spans, ratio=0.25)
    for _ in range(8_000):
        await traced({"type": "http", "method": "POST", "path": CHAT, "headers": []}, receive, send)
    assert 1_800 < len(spans.spans) < 2_200  # 2,000 expected; the bounds are 5 standard deviations wide
    assert len({span.trace_id for span in spans.spans}) == len(spans.spans)
    assert all(span.parent_id == 0 for span in spans.spans)


@pytest.mark.parametrize(
    "traceparent",
    [
        f"00-{TRACE_ID}-{CLIENT_SPAN}-01-extra",  # version 00 has exactly four fields
        f"ff-{TRACE_ID}-{CLIENT_SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{CLIENT_SPAN}-01",  # an all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # an all-zero parent
        f"00-{TRACE_ID.upper()}-{CLIENT_SPAN}-01",  # upper-case hex
        f"00-{TRACE_ID}-{CLIENT_SPAN}-1",
        f"00-{TRACE_ID[:-1]}g-{CLIENT_SPAN}-01",
        f"00-{TRACE_ID}\n-{CLIENT_SPAN}-01",
        "0" * 4000,
        "",
    ],
)
async def test_a_malformed_traceparent_starts_a_new_trace(traceparent: str) -> None:
    seen, spans = _Seen(), MemorySpans()
    headers = [(b"traceparent", traceparent.encode()), (b"tracestate", b"vendor=1")]
    app = _app(seen, spans)  # called directly: a client library would refuse some of these headers

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    await app({"type": "http", "method": "POST", "path": CHAT, "headers": headers, "query_string": b""}, receive, send)
    [server] = spans.spans
    assert server.parent_id == 0
    assert f"{server.trace_id:032x}" != TRACE_ID
    assert server.trace_state == ""  # a new trace carries no vendor's state
    assert seen.sent == {"traceparent": server.traceparent}


def test_a_later_versions_traceparent_is_read_for_its_known_fields() -> None:
    assert parse_traceparent(f"01-{TRACE_ID}-{CLIENT_SPAN}-03-more") == (int(TRACE_ID, 16), int(CLIENT_SPAN, 16), True)
    assert parse_traceparent(f"01-{TRACE_ID}-{CLIENT_SPAN}-02") == (int(TRACE_ID, 16), int(CLIENT_SPAN, 16), False)
    assert parse_traceparent(SAMPLED) == (int(TRACE_ID, 16), int(CLIENT_SPAN, 16), True)


async def test_a_traceparent_sent_twice_starts_a_new_trace_and_lists_sent_twice_are_joined() -> None:
    seen, spans = _Seen(), MemorySpans()
    transport = httpx.ASGITransport(app=_app(seen, spans))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        headers = [("traceparent", SAMPLED), ("traceparent", SAMPLED), ("baggage", "a=1"), ("baggage", "b=2")]
        assert (await client.post(CHAT, headers=headers)).status_code == 200
    [server] = spans.spans
    assert (server.parent_id, f"{server.trace_id:032x}" != TRACE_ID) == (0, True)
    assert seen.sent == {"traceparent": server.traceparent, "baggage": "a=1,b=2"}
    seen, spans = _Seen(), MemorySpans()
    transport = httpx.ASGITransport(app=_app(seen, spans))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        headers = [("traceparent", SAMPLED), ("tracestate", "a=1"), ("tracestate", "b=2")]
        assert (await client.post(CHAT, headers=headers)).status_code == 200
    [server] = spans.spans
    assert server.trace_state == "a=1,b=2"
    assert seen.sent["tracestate"] == "a=1,b=2"


async def test_a_tracestate_too_long_or_values_not_ascii_are_not_passed_on() -> None:
    seen, spans = _Seen(), MemorySpans()
    headers = [
        (b"traceparent", SAMPLED.encode()),
        (b"tracestate", b"v=" + b"x" * 511),
        (b"baggage", "k=é".encode()),  # raw UTF-8, where W3C baggage percent-encodes
    ]
    app = _app(seen, spans)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        return None

    await app({"type": "http", "method": "POST", "path": CHAT, "headers": headers, "query_string": b""}, receive, send)
    [server] = spans.spans
    assert server.trace_state == ""
    assert seen.sent == {"traceparent": server.traceparent}


@pytest.mark.parametrize("path", ["/health", "/metrics", "/v1/models"])
async def test_other_routes_are_never_traced(path: str) -> None:
    seen, spans = _Seen(), MemorySpans()
    assert (await _call(seen, spans, "GET", path, SAMPLED)).status_code == 200
    assert seen.sent == {}
    assert spans.spans == []


@pytest.mark.parametrize(("status", "error"), [(503, "503"), (0, "RuntimeError"), (429, None)])
async def test_a_server_error_marks_the_span(status: int, error: str | None) -> None:
    spans = MemorySpans()
    response = await _call(_Seen(), spans, "POST", f"{CHAT}?status={status}", SAMPLED)
    assert response.status_code == (status or 500)
    [server] = spans.spans
    assert server.attributes.get("error.type") == error
    assert server.error is (error is not None)
    if status:
        assert server.attributes["http.response.status_code"] == status
    else:  # the exception, as OpenTelemetry's semantic conventions record one
        [event] = server.events
        assert (event.name, dict(event.attributes)) == (
            "exception",
            {"exception.type": "RuntimeError", "exception.message": "a bug"},
        )


# a whole gateway in process, over a counting engine

ENGINE = "http://engine"


@asynccontextmanager
async def _serving(
    spans: MemorySpans | None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, CountingEngine]]:
    """A gateway over one counting engine, its spans in `spans` (tracing off when None), with
    `settings` (authentication off unless they say otherwise)."""
    engine = CountingEngine()
    async with gateway_in_process(_settings(**settings), {ENGINE: engine.app}, spans=spans) as gateway:
        yield gateway.client, engine


def _settings(**settings: Any) -> GatewaySettings:
    return pool_settings([ENGINE], **settings)


def _by_name(spans: MemorySpans, name: str) -> list[ServerSpan]:
    return [span for span in spans.spans if span.name == name]


async def test_the_gateway_span_tree_continues_the_client_trace() -> None:
    spans = MemorySpans()
    async with _serving(spans, pool={"region": "eu"}, region="eu") as (client, engine):
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": "t1"}
        headers = {"traceparent": SAMPLED, "x-request-id": "traced-1"}
        assert (await client.post(CHAT, json=body, headers=headers)).status_code == 200
    [root] = _by_name(spans, f"POST {CHAT}")
    assert f"{root.trace_id:032x}" == TRACE_ID
    assert f"{root.parent_id:016x}" == CLIENT_SPAN
    # One span a request: who called, how long it queued and where it went are its attributes.
    assert [span.name for span in spans.spans] == [f"POST {CHAT}"]
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
    assert root.events == []
    # The engine got the server span as its parent, in the client's trace.
    assert engine.traceparents["traced-1"] == f"00-{TRACE_ID}-{root.span_id:016x}-01"


async def test_a_failed_attempt_is_an_event_of_the_request_span() -> None:
    spans = MemorySpans()
    engines = {"http://engine-a": CountingEngine(name="a"), "http://engine-b": CountingEngine(name="b")}
    async with gateway_in_process(
        pool_settings(list(engines)), {u: e.app for u, e in engines.items()}, spans=spans
    ) as gateway:
        engines["http://engine-a"].behave(fail_times=1000, fail_status=503)
        for user in range(8):  # keys spread over both replicas: some go to the failing one first
            body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": f"u{user}"}
            response = await gateway.client.post(CHAT, json=body, headers={"traceparent": SAMPLED})
            assert response.status_code == 200
    served = _by_name(spans, f"POST {CHAT}")
    retried = [span for span in served if span.events]
    assert retried
    assert len(retried) < len(served)
    for span in retried:
        [failed] = span.events
        assert failed.name == "switchyard.attempt_failed"
        assert (failed.attributes["switchyard.replica"], failed.attributes["error.type"]) == ("p-0", "overloaded")
        assert "switchyard.attempt" not in failed.attributes  # the first attempt's decision
        assert (span.attributes["switchyard.replica"], span.attributes["switchyard.attempt"]) == ("p-1", 2)
        assert not span.error


async def test_predict_continues_the_client_trace_to_the_engine() -> None:
    spans = MemorySpans()
    async with _serving(spans) as (client, engine):
        headers = {"traceparent": SAMPLED, "x-request-id": "predicted-1"}
        assert (await client.post("/predict", json={"text": "hi"}, headers=headers)).status_code == 200
    [root] = _by_name(spans, "POST /predict")
    assert f"{root.trace_id:032x}" == TRACE_ID
    assert engine.traceparents["predicted-1"] == f"00-{TRACE_ID}-{root.span_id:016x}-01"


async def test_a_streams_span_lasts_until_its_last_event() -> None:
    spans = MemorySpans()
    async with _serving(spans) as (client, engine):
        engine.behave(chunk_delay_s=0.1)
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
        assert (await client.post(CHAT, json=body)).status_code == 200
    [root] = _by_name(spans, f"POST {CHAT}")
    assert root.attributes["switchyard.events"] == 4
    assert (root.end_ns - root.start_ns) / 1e9 >= 0.35  # four events 0.1 s apart


async def test_a_trace_the_caller_did_not_sample_costs_no_spans() -> None:
    spans = MemorySpans()
    async with _serving(spans) as (client, engine):
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"traceparent": UNSAMPLED, "x-request-id": "unsampled-1"}
        assert (await client.post(CHAT, json=body, headers=headers)).status_code == 200
    assert spans.spans == []
    # The engine still learns the trace, and that it is not sampled.
    sent = engine.traceparents["unsampled-1"]
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")


async def test_probes_scrapes_and_the_model_list_are_never_traced() -> None:
    spans = MemorySpans()
    async with _serving(spans) as (client, _):
        for path in ("/health", "/ready", "/metrics", "/v1/models"):
            assert (await client.get(path, headers={"traceparent": SAMPLED})).status_code == 200
    assert spans.spans == []


async def test_without_a_traceparent_a_request_starts_its_own_trace() -> None:
    spans = MemorySpans()
    async with _serving(spans) as (client, _):
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post(CHAT, json=body)).status_code == 200
    [root] = _by_name(spans, f"POST {CHAT}")
    assert root.parent_id == 0
    assert f"{root.trace_id:032x}" != TRACE_ID


async def test_the_server_span_names_the_authenticated_caller(tmp_path: Path) -> None:
    spans = MemorySpans()
    builtin = {"auth_mode": "builtin", "data_dir": tmp_path}
    async with _serving(spans, **builtin) as (client, _):
        # signed with the key the built-in issuer made at start
        token = mint(_settings(**builtin), subject="alice", scopes=["chat"], ttl_s=60)
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post(CHAT, json=body, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200
    [root] = _by_name(spans, f"POST {CHAT}")
    assert root.attributes["enduser.id"] == "alice"


async def test_without_a_sink_nothing_is_traced_or_passed_on() -> None:
    async with _serving(None) as (client, engine):
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"traceparent": SAMPLED, "x-request-id": "untraced-1"}
        assert (await client.post(CHAT, json=body, headers=headers)).status_code == 200
    assert "untraced-1" not in engine.traceparents  # tracing off: the gateway adds no trace context
