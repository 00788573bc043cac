"""The OTLP/HTTP exporter (app/observability/export.py) against a collector on a real socket:
batches, headers, gzip, retries of what may pass, drops that are counted, a flush on close,
and a collector that is down or slow never reaching the caller of `export`."""

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from app.observability import export
from app.observability.export import OtlpExporter
from harness.collector import Collector
from harness.collector import collector as running_collector
from harness.servers import free_port
from protocol.otlp import ServerSpan, encode_request, encode_span


@pytest.fixture
def collector() -> Iterator[Collector]:
    with running_collector() as running:
        yield running


def _span(n: int) -> ServerSpan:
    span = ServerSpan("POST /v1/chat/completions", 7, n, 0, "", {"n": n})
    span.end_ns = span.start_ns + 1
    return span


def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_batch_is_sent_at_once_and_the_rest_on_close(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, {"service.name": "gw"}, delay_s=60, max_batch=4)
    for n in range(1, 11):
        exporter.export(_span(n))
    _eventually(lambda: len(collector.span_ids()) >= 8)  # two full batches, long before the delay
    exporter.close()
    assert collector.span_ids() == list(range(1, 11))
    path, headers, request = collector.received[0]
    assert path == "/v1/traces"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert request.resource_spans[0].resource.attributes[0].value.string_value == "gw"
    assert (exporter.exported, exporter.dropped) == (10, 0)


def test_held_spans_leave_after_the_delay(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, {}, delay_s=0.2)
    exporter.export(_span(1))
    _eventually(lambda: collector.span_ids() == [1])
    exporter.close()


def test_headers_and_gzip_come_from_the_environment(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=secret%20one,x-team=infra")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    exporter = OtlpExporter.from_environment(collector.url + "/", "switchyard-gateway")
    exporter.export(_span(1))
    exporter.close()
    [(path, headers, request)] = collector.received
    assert path == "/v1/traces"
    assert (headers["x-api-key"], headers["x-team"], headers["Content-Encoding"]) == ("secret one", "infra", "gzip")
    resource = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "switchyard-gateway"
    assert resource["deployment.environment"] == "test"


def test_a_kept_alive_connection_the_collector_closed_is_replaced_at_once(collector: Collector) -> None:
    collector.hang_up = True
    counted: list[tuple[str, int]] = []
    exporter = OtlpExporter(
        collector.url,
        {},
        delay_s=60,
        max_batch=1,
        backoff_s=(30,),
        counted=lambda outcome, n: counted.append((outcome, n)),
    )
    exporter.export(_span(1))
    _eventually(lambda: collector.span_ids() == [1])
    started = time.monotonic()
    exporter.export(_span(2))  # on the connection the collector closed: found out, and sent on a new one
    _eventually(lambda: collector.span_ids() == [1, 2])
    assert time.monotonic() - started < 5  # at once, not after the 30 s backoff of a failed try
    exporter.close()
    assert collector.span_ids() == [1, 2]
    assert counted == [("exported", 1), ("exported", 1)]


def test_the_service_is_named_by_the_environment_when_it_says(
    collector: Collector, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")
    exporter = OtlpExporter.from_environment(collector.url, "switchyard-gateway")
    assert "OTEL_EXPORTER_OTLP_TIMEOUT='soon' is no number of seconds" in caplog.text
    exporter.export(_span(1))
    exporter.close()
    [(_, _, request)] = collector.received
    resource = {kv.key: kv.value.string_value for kv in request.resource_spans[0].resource.attributes}
    assert resource["service.name"] == "gateway-eu"


def _big(n: int) -> ServerSpan:
    return ServerSpan("POST /v1/chat/completions", 7, n, 0, "", {f"k{key}": "x" * 1000 for key in range(10)})


def test_batches_are_bounded_in_bytes(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, {}, delay_s=60, max_batch_bytes=3 * len(encode_span(_big(1))))
    for n in range(1, 10):
        exporter.export(_big(n))
    exporter.close()
    assert [len(request.resource_spans[0].scope_spans[0].spans) for _, _, request in collector.received] == [3, 3, 3]
    assert collector.span_ids() == list(range(1, 10))


def test_what_waits_is_bounded_in_bytes(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, {}, delay_s=60, max_held_bytes=7 * len(encode_span(_big(1))))
    for n in range(1, 10):
        exporter.export(_big(n))
    assert exporter.dropped == 2
    exporter.close()
    assert collector.span_ids() == list(range(1, 8))


def test_a_batch_the_collector_may_take_later_is_retried(collector: Collector) -> None:
    collector.statuses = [503, 429]
    exporter = OtlpExporter(collector.url, {}, delay_s=0.05, backoff_s=(0.01, 0.01))
    exporter.export(_span(1))
    _eventually(lambda: collector.span_ids() == [1])
    exporter.close()
    assert (exporter.exported, exporter.dropped) == (1, 0)


def test_a_batch_refused_for_good_is_dropped_and_counted(collector: Collector) -> None:
    collector.statuses = [400]
    exporter = OtlpExporter(collector.url, {}, delay_s=0.05, backoff_s=(0.01, 0.01))
    exporter.export(_span(1))
    _eventually(lambda: exporter.dropped == 1)
    exporter.export(_span(2))  # the next batch is sent as usual
    _eventually(lambda: collector.span_ids() == [2])
    exporter.close()
    assert (exporter.exported, exporter.dropped) == (1, 1)


def test_a_collector_that_is_down_never_blocks_export() -> None:
    exporter = OtlpExporter(
        f"http://127.0.0.1:{free_port()}", {}, delay_s=0.01, timeout_s=0.5, max_held=100, backoff_s=(0.01,)
    )
    started = time.perf_counter()
    for n in range(1, 1001):
        exporter.export(_span(n))
    assert time.perf_counter() - started < 1.0  # encoding and appending only (about 10 µs each)
    _eventually(lambda: exporter.exported + exporter.dropped == 1000)  # the full buffer's drops included
    assert exporter.exported == 0
    exporter.close()


def test_a_slow_collector_fills_the_buffer_then_new_spans_are_dropped(collector: Collector) -> None:
    collector.delay_s = 0.5
    exporter = OtlpExporter(collector.url, {}, delay_s=60, max_batch=2, max_held=3)
    exporter.export(_span(1))
    exporter.export(_span(2))
    _eventually(lambda: collector.started == 1)  # the thread took both and waits on the collector
    for n in range(3, 10):
        exporter.export(_span(n))
    assert exporter.dropped == 4  # 3, 4, 5 held; 6 to 9 dropped
    exporter.close()
    assert collector.span_ids() == [1, 2, 3, 4, 5]


def test_nothing_is_taken_after_close(collector: Collector) -> None:
    exporter = OtlpExporter(collector.url, {})
    exporter.close()  # never started: nothing to wait for
    exporter.export(_span(1))
    assert exporter.dropped == 1
    assert collector.received == []


@pytest.mark.parametrize(
    "endpoint", ["collector:4318", "ftp://collector", "http://collector:port", "http://", "http://c:4318/?k=v#f"]
)
def test_an_endpoint_that_is_no_http_url_is_refused_at_start(endpoint: str) -> None:
    with pytest.raises(ValueError, match=r"OTLP/HTTP collector|not a number"):
        OtlpExporter(endpoint, {})


def test_a_bug_while_sending_drops_that_batch_and_the_thread_goes_on(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def failing_once(*args: Any) -> bytes:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return encode_request(*args)

    monkeypatch.setattr(export, "encode_request", failing_once)
    exporter = OtlpExporter(collector.url, {}, delay_s=0.05)
    exporter.export(_span(1))
    _eventually(lambda: exporter.dropped == 1)
    exporter.export(_span(2))
    _eventually(lambda: collector.span_ids() == [2])
    exporter.close()
    assert (exporter.exported, exporter.dropped) == (1, 1)
