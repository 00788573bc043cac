"""Traces with an in-memory exporter: the gateway's span tree for a request (its server span,
app/observability/tracing.py, continues the client's `traceparent`; the others hang below
it), the context it sends the engine, and our engine continuing it."""

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.auth.__main__ import mint
from app.factory import create_app
from app.settings import GatewaySettings
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.servers import ROOT, ServerProcess
from protocol import tracing
from tests.test_tracing_units import recorder

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The provider of this process, shared with tests/test_tracing_units.py (OpenTelemetry
    takes one per process)."""
    return recorder()


@contextmanager
def _serving(app: FastAPI) -> Iterator[TestClient]:
    """The app with its lifespan run, once its health probes have found the engine."""
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, "the gateway never found its engine"
            time.sleep(0.05)
        yield client


def _settings(engine: ServerProcess, data_dir: Path, **overrides: object) -> GatewaySettings:
    """One pool on `engine`, authentication off, probes every 0.2 s (tests may override)."""
    values = {"pools": [{"name": "p", "replicas": [engine.url]}], "auth_mode": "disabled", "health_interval_s": 0.2,
              "data_dir": str(data_dir)}  # fmt: skip
    return GatewaySettings.model_validate(values | overrides)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


def test_the_gateway_span_tree_continues_the_client_trace(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    pools = [{"name": "p", "region": "eu", "replicas": [counting_engine.url]}]
    settings = _settings(counting_engine, tmp_path, pools=pools, region="eu")
    with _serving(create_app(settings)) as client:
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": "t1"}
        headers = {"traceparent": TRACEPARENT, "x-request-id": "traced-1"}
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    spans = exporter.get_finished_spans()
    [root] = _by_name(spans, "POST /v1/chat/completions")
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    assert root.parent is not None
    assert f"{root.parent.span_id:016x}" == CLIENT_SPAN
    assert root.attributes is not None
    assert root.attributes["http.response.status_code"] == 200
    children = {
        span.name: span for span in spans if span.parent is not None and span.parent.span_id == root.context.span_id
    }
    assert set(children) == {"admission", "route", "upstream"}
    assert children["admission"].attributes == {
        "switchyard.tenant": "t1",
        "switchyard.queue_wait_s": pytest.approx(0, abs=0.5),
    }
    route = children["route"].attributes
    assert route is not None
    assert (route["switchyard.region"], route["switchyard.replica"], route["switchyard.reason"]) == (
        "eu",
        "p-0",
        "affinity",
    )
    upstream = children["upstream"]
    assert upstream.kind == trace.SpanKind.CLIENT
    assert upstream.attributes == {
        "switchyard.replica": "p-0",
        "switchyard.attempt": 1,
        "http.response.status_code": 200,
    }
    # The engine got the upstream span as its parent, in the client's trace.
    sent = httpx.get(counting_engine.url + "/executions").json()["traceparents"]["traced-1"]
    assert sent == f"00-{TRACE_ID}-{upstream.context.span_id:016x}-01"


def test_predict_continues_the_client_trace_to_the_engine(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    with _serving(create_app(_settings(counting_engine, tmp_path))) as client:
        exporter.clear()
        headers = {"traceparent": TRACEPARENT, "x-request-id": "predicted-1"}
        assert client.post("/predict", json={"text": "hi"}, headers=headers).status_code == 200
    spans = exporter.get_finished_spans()
    [root] = _by_name(spans, "POST /predict")
    assert f"{root.context.trace_id:032x}" == TRACE_ID
    [upstream] = _by_name(spans, "upstream")
    assert {"admission", "route"} <= {span.name for span in spans}
    sent = httpx.get(counting_engine.url + "/executions").json()["traceparents"]["predicted-1"]
    assert sent == f"00-{TRACE_ID}-{upstream.context.span_id:016x}-01"


def test_a_streams_upstream_span_lasts_until_its_last_event(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    settings = _settings(counting_engine, tmp_path)
    httpx.post(counting_engine.url + "/control", json={"chunk_delay_s": 0.1}).raise_for_status()
    try:
        with _serving(create_app(settings)) as client:
            exporter.clear()
            body = {
                "model": "counting",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
                "stream": True,
            }
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                response.read()
    finally:
        httpx.post(counting_engine.url + "/control", json={}).raise_for_status()
    [upstream] = _by_name(exporter.get_finished_spans(), "upstream")
    assert upstream.attributes is not None
    assert upstream.attributes["switchyard.events"] == 4
    assert upstream.start_time is not None
    assert upstream.end_time is not None
    assert (upstream.end_time - upstream.start_time) / 1e9 >= 0.35  # four events 0.1 s apart


def test_a_trace_the_caller_did_not_sample_costs_no_spans(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    settings = _settings(counting_engine, tmp_path)
    with _serving(create_app(settings)) as client:
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-00", "x-request-id": "unsampled-1"}
        assert client.post("/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert exporter.get_finished_spans() == ()
    # The engine still learns the trace, and that it is not sampled.
    sent = httpx.get(counting_engine.url + "/executions").json()["traceparents"]["unsampled-1"]
    assert sent.startswith(f"00-{TRACE_ID}-")
    assert sent.endswith("-00")


def test_probes_scrapes_and_the_model_list_are_never_traced(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    with _serving(create_app(_settings(counting_engine, tmp_path))) as client:
        exporter.clear()
        for path in ("/health", "/ready", "/metrics", "/v1/models"):
            assert client.get(path, headers={"traceparent": TRACEPARENT}).status_code == 200
    assert exporter.get_finished_spans() == ()


def test_no_span_is_begun_below_a_parent_that_is_not_sampled(exporter: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    unsampled = trace.NonRecordingSpan(
        trace.SpanContext(int(TRACE_ID, 16), int(CLIENT_SPAN, 16), is_remote=True, trace_flags=trace.TraceFlags(0))
    )
    with trace.use_span(unsampled), tracing.span(tracer, "admission") as span:
        assert span is trace.INVALID_SPAN
    with tracing.span(tracer, "root") as span:  # no parent: the sampler decides (here: recorded)
        assert span.is_recording()


async def test_our_engine_continues_the_trace(exporter: InMemorySpanExporter) -> None:
    transport = httpx.ASGITransport(app=create_engine_app(FakeEngine("Hello.", max_model_len=64)))
    exporter.clear()
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("/v1/chat/completions", json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    [span] = _by_name(exporter.get_finished_spans(), "engine.chat")
    assert f"{span.context.trace_id:032x}" == TRACE_ID
    assert span.parent is not None
    assert f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.kind == trace.SpanKind.SERVER


def test_without_a_traceparent_a_request_starts_its_own_trace(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    settings = _settings(counting_engine, tmp_path)
    with _serving(create_app(settings)) as client:
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    [root] = _by_name(exporter.get_finished_spans(), "POST /v1/chat/completions")
    assert root.parent is None
    assert f"{root.context.trace_id:032x}" != TRACE_ID


def test_authentication_has_its_span(
    exporter: InMemorySpanExporter, counting_engine: ServerProcess, tmp_path: Path
) -> None:
    settings = _settings(counting_engine, tmp_path, auth_mode="builtin")
    app = create_app(settings)  # the built-in issuer: its key is made now
    token = mint(settings, subject="alice", scopes=["chat"], ttl_s=60)
    with _serving(app) as client:
        exporter.clear()
        body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        response = client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 200
    [auth] = _by_name(exporter.get_finished_spans(), "auth")
    assert auth.attributes == {"enduser.id": "alice"}
    [admission] = _by_name(exporter.get_finished_spans(), "admission")
    assert admission.attributes is not None
    assert admission.attributes["switchyard.tenant"] == "alice"


def test_configure_samples_the_given_share_of_traces() -> None:
    """In a process of its own: OpenTelemetry takes one provider per process."""
    script = (
        "from opentelemetry import trace; from protocol import tracing; "
        "tracing.configure('switchyard-gateway', 'http://127.0.0.1:9', 0.25); "
        "print(tracing.enabled(), trace.get_tracer_provider().sampler.get_description())"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    enabled, sampler = run.stdout.split()
    assert enabled == "True"
    assert sampler.startswith("ParentBased{root:TraceIdRatioBased{0.25},remoteParentSampled:AlwaysOnSampler,")
