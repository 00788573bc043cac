"""A gateway process exporting its server spans to a collector on a real socket, configured as
users configure it (SWITCHYARD_OTLP_ENDPOINT, the sampling ratio, OpenTelemetry's header and
resource variables): every recorded span arrives, the last ones at shutdown; the ratio holds for
traces begun here; the engine is each span's child."""

import json
import signal
from pathlib import Path

import httpx

from harness.collector import Collector, collector
from harness.servers import ServerProcess, free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CHAT = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def _traced_gateway(engine: ServerProcess, log_dir: Path, otel: Collector, ratio: float) -> ServerProcess:
    port = free_port()
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url]}]),
        "SWITCHYARD_OTLP_ENDPOINT": otel.url,
        "SWITCHYARD_OTLP_SAMPLE_RATIO": str(ratio),
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20collector-token",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
    }
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    return gateway.wait_ready()


def test_every_recorded_span_reaches_the_collector_by_shutdown(counting_engine: ServerProcess, log_dir: Path) -> None:
    with collector() as otel:
        gateway = _traced_gateway(counting_engine, log_dir, otel, 1.0)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                for n in range(20):
                    headers = {"traceparent": f"00-{TRACE_ID}-{n + 1:016x}-01", "x-request-id": f"traced-{n}"}
                    assert client.post("/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
                traceparents = httpx.get(counting_engine.url + "/executions").json()["traceparents"]
        finally:
            assert gateway.stop(signal.SIGTERM) == 0  # well within the exporter's one-second delay
        spans = otel.spans()
    assert len(spans) == 20
    assert {span.trace_id.hex() for span in spans} == {TRACE_ID}
    assert sorted(int.from_bytes(span.parent_span_id, "big") for span in spans) == list(range(1, 21))
    _, headers, request = otel.received[0]
    assert headers["authorization"] == "Bearer collector-token"
    resource = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
    assert (resource["service.name"], resource["deployment.environment"]) == ("switchyard-gateway", "test")
    # Each request's engine call is the child of its server span.
    by_parent = {int.from_bytes(span.parent_span_id, "big"): span.span_id.hex() for span in spans}
    for n in range(20):
        assert traceparents[f"traced-{n}"] == f"00-{TRACE_ID}-{by_parent[n + 1]}-01"


def test_the_ratio_decides_the_traces_begun_here(counting_engine: ServerProcess, log_dir: Path) -> None:
    with collector() as otel:
        gateway = _traced_gateway(counting_engine, log_dir, otel, 0.25)
        try:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                for _ in range(400):
                    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
        finally:
            assert gateway.stop(signal.SIGTERM) == 0
        spans = otel.spans()
    assert 60 < len(spans) < 140  # 100 expected; the bounds are 4.6 standard deviations wide
    assert all(span.parent_span_id == b"" for span in spans)
