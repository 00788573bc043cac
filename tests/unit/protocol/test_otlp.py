"""The hand-written OTLP/protobuf encoding (protocol/otlp.py), read back with the classes that
opentelemetry-proto generates from the specification's .proto files."""

from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from protocol.otlp import MAX_VALUE_CHARS, Attribute, ServerSpan, encode_request, encode_span

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7


def _span(**fields: object) -> ServerSpan:
    span = ServerSpan("POST /v1/chat/completions", TRACE_ID, 0xA1B2C3D4E5F60718, PARENT, "", {"a": 1})
    span.start_ns, span.end_ns = 1_700_000_000_000_000_000, 1_700_000_000_250_000_000
    for name, value in fields.items():
        setattr(span, name, value)
    return span


def _decoded(*spans: ServerSpan, resource: dict[str, Attribute] | None = None) -> ExportTraceServiceRequest:
    encoded = encode_request(
        resource or {"service.name": "switchyard-gateway"}, "switchyard.gateway", map(encode_span, spans)
    )
    request = ExportTraceServiceRequest()
    request.ParseFromString(encoded)
    return request


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    assert kind is not None
    return getattr(value, kind)


def test_a_span_reads_back_field_for_field() -> None:
    span = _span(trace_state="vendor=1", error=True)
    span.add_event("switchyard.attempt_failed", {"switchyard.replica": "p-0", "error.type": "overloaded"})
    request = _decoded(span)
    [resource_spans] = request.resource_spans
    assert {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes} == {
        "service.name": "switchyard-gateway"
    }
    [scope_spans] = resource_spans.scope_spans
    assert scope_spans.scope.name == "switchyard.gateway"
    [read] = scope_spans.spans
    assert read.trace_id == TRACE_ID.to_bytes(16, "big")
    assert read.span_id == (0xA1B2C3D4E5F60718).to_bytes(8, "big")
    assert read.parent_span_id == PARENT.to_bytes(8, "big")
    assert read.trace_state == "vendor=1"
    assert read.name == "POST /v1/chat/completions"
    assert read.kind == Span.SPAN_KIND_SERVER
    assert (read.start_time_unix_nano, read.end_time_unix_nano) == (span.start_ns, span.end_ns)
    assert read.status.code == Status.STATUS_CODE_ERROR
    assert read.flags == 0x01 | 0x100 | 0x200  # sampled; the parent's remoteness known, and remote
    [event] = read.events
    assert event.name == "switchyard.attempt_failed"
    assert event.time_unix_nano == span.events[0].time_ns
    assert {kv.key: _value(kv.value) for kv in event.attributes} == {
        "switchyard.replica": "p-0",
        "error.type": "overloaded",
    }


def test_a_root_has_no_parent_and_an_unset_status() -> None:
    [read] = _decoded(_span(parent_id=0)).resource_spans[0].scope_spans[0].spans
    assert read.parent_span_id == b""
    assert read.trace_state == ""
    assert read.status.code == Status.STATUS_CODE_UNSET
    assert read.flags == 0x01 | 0x100  # the parent's remoteness known: there is none
    assert read.events == []


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        0,
        1,
        127,
        128,
        300,
        -1,
        -(2**63),
        2**63 - 1,
        0.0,
        -2.5,
        1e-300,
        "",
        "ascii",
        "é ✓ 日本",
        "x" * 200,  # a length over 127: two bytes of varint
        "y" * 1024,  # the longest kept whole
    ],
)
def test_attribute_values_keep_their_type_and_value(value: Attribute) -> None:
    [read] = _decoded(_span(attributes={"k": value})).resource_spans[0].scope_spans[0].spans
    [kv] = read.attributes
    assert kv.key == "k"
    kind = {bool: "bool_value", int: "int_value", float: "double_value", str: "string_value"}[type(value)]
    assert kv.value.WhichOneof("value") == kind
    assert _value(kv.value) == value


def test_values_that_would_not_encode_are_sent_as_text_and_long_ones_cut() -> None:
    attributes: dict[str, Any] = {"long": "é" * 5000, "huge": 2**70, "low": -(2**63) - 1, "none": None, "bytes": b"x"}
    [read] = _decoded(_span(attributes=attributes)).resource_spans[0].scope_spans[0].spans
    values = {kv.key: _value(kv.value) for kv in read.attributes}
    assert values == {
        "long": "é" * MAX_VALUE_CHARS,
        "huge": str(2**70),
        "low": str(-(2**63) - 1),
        "none": "None",
        "bytes": "b'x'",
    }


def test_a_lone_surrogate_is_replaced_not_encoded_as_invalid_utf8() -> None:
    span = _span(attributes={"enduser.id": "bad\ud800id"})
    [read] = _decoded(span).resource_spans[0].scope_spans[0].spans
    assert read.attributes[0].value.string_value == "bad?id"


def test_a_batch_is_the_spans_in_order_under_one_resource() -> None:
    spans = [_span(span_id=n + 1, attributes={"n": n}) for n in range(300)]
    request = _decoded(*spans, resource={"service.name": "gw", "deployment.environment": "test", "workers": 4})
    [resource_spans] = request.resource_spans
    workers = resource_spans.resource.attributes[2]
    assert (workers.key, workers.value.int_value) == ("workers", 4)
    read = resource_spans.scope_spans[0].spans
    assert [int.from_bytes(span.span_id, "big") for span in read] == list(range(1, 301))
    assert [span.attributes[0].value.int_value for span in read] == list(range(300))


def test_an_empty_batch_is_a_valid_request() -> None:
    assert _decoded().resource_spans[0].scope_spans[0].spans == []
