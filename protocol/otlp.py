"""A server span as a plain record, and its OTLP/protobuf encoding, written by hand.

The gateway records one span a request whose trace is sampled (app/observability/tracing.py)
and keeps it itself rather than through OpenTelemetry's SDK: the SDK's span (its lock, its
checks of every attribute) and its encoder, which builds protobuf objects field by field, cost
a recorded request about six times what this record and `encode_span` do
(docs/benchmarks.md). The encoding follows opentelemetry-proto's `trace/v1/trace.proto` and
`collector/trace/v1/trace_service.proto`; the tests decode it with the generated classes.

A string value is cut to `MAX_VALUE_CHARS` (a caller's `user` may be megabytes long; the SDK's
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT does the same), an integer outside int64 is sent as its
decimal string, and any other value as its `str`: a span never fails to encode.

Protobuf's repeated fields concatenate, so a span is encoded once, when it ends, framed as an
element of `ScopeSpans.spans`, and a batch is a join of frames under one fixed prefix.
"""

import random
import struct
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_VALUE_CHARS",
    "Attribute",
    "ServerSpan",
    "SpanEvent",
    "encode_request",
    "encode_span",
    "new_span_id",
    "new_trace_id",
]

Attribute = str | int | float | bool

_SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER
_STATUS_ERROR = b"\x7a\x02\x18\x02"  # Span.status (15) = Status{code (3): STATUS_CODE_ERROR}
# Span.flags: the W3C trace flags (sampled), that the parent's remoteness is known, and whether it is.
_FLAGS_SAMPLED_HAS_IS_REMOTE = 0x01 | 0x100
_FLAG_IS_REMOTE = 0x200
_U64 = (1 << 64) - 1
_INT64 = range(-(1 << 63), 1 << 63)
MAX_VALUE_CHARS = 1024


def new_trace_id() -> int:
    """A random 128-bit trace id (never zero: W3C's invalid id)."""
    return random.getrandbits(128) or 1


def new_span_id() -> int:
    """A random 64-bit span id (never zero)."""
    return random.getrandbits(64) or 1


@dataclass(slots=True, frozen=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, Attribute]


@dataclass(slots=True)
class ServerSpan:
    """A request's server span. Its ids are fixed when it begins, so the next hop can be told
    its parent before it ends; the rest is filled in as the request goes."""

    name: str
    trace_id: int
    span_id: int
    parent_id: int  # the caller's span; 0 for a root
    trace_state: str  # the caller's `tracestate`, kept with the span as W3C asks
    attributes: dict[str, Attribute]
    start_ns: int = field(default_factory=time.time_ns)
    end_ns: int = 0
    events: list[SpanEvent] = field(default_factory=list)
    error: bool = False  # status ERROR, else UNSET

    @property
    def traceparent(self) -> str:
        """The W3C `traceparent` that makes this span the next hop's parent (sampled)."""
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-01"

    def add_event(self, name: str, attributes: Mapping[str, Attribute]) -> None:
        self.events.append(SpanEvent(name, time.time_ns(), attributes))


def encode_span(span: ServerSpan) -> bytes:
    """`span` as an element of `ScopeSpans.spans` (field 2, with its length)."""
    parts = [
        b"\x0a\x10",  # trace_id (1): 16 bytes
        span.trace_id.to_bytes(16, "big"),
        b"\x12\x08",  # span_id (2): 8 bytes
        span.span_id.to_bytes(8, "big"),
    ]
    if span.trace_state:
        parts.append(_string(b"\x1a", span.trace_state))  # trace_state (3)
    if span.parent_id:
        parts += (b"\x22\x08", span.parent_id.to_bytes(8, "big"))  # parent_span_id (4)
    parts += (
        _string(b"\x2a", span.name),  # name (5)
        b"\x30\x02",  # kind (6): SERVER
        b"\x39",  # start_time_unix_nano (7), fixed64
        struct.pack("<Q", span.start_ns),
        b"\x41",  # end_time_unix_nano (8), fixed64
        struct.pack("<Q", span.end_ns),
    )
    parts += (_framed(b"\x4a", _key_value(key, value)) for key, value in span.attributes.items())  # attributes (9)
    for event in span.events:  # events (11): time (1), name (2), attributes (3)
        body = [b"\x09", struct.pack("<Q", event.time_ns), _string(b"\x12", event.name)]
        body += (_framed(b"\x1a", _key_value(key, value)) for key, value in event.attributes.items())
        parts.append(_framed(b"\x5a", b"".join(body)))
    if span.error:
        parts.append(_STATUS_ERROR)
    flags = _FLAGS_SAMPLED_HAS_IS_REMOTE | (_FLAG_IS_REMOTE if span.parent_id else 0)
    parts += (b"\x85\x01", struct.pack("<I", flags))  # flags (16), fixed32
    return _framed(b"\x12", b"".join(parts))


def encode_request(resource: Mapping[str, Attribute], scope: str, spans: Iterable[bytes]) -> bytes:
    """An `ExportTraceServiceRequest` of one resource and one instrumentation scope, from spans
    that `encode_span` encoded."""
    resource_message = b"".join(_framed(b"\x0a", _key_value(key, value)) for key, value in resource.items())
    scope_spans = _framed(b"\x0a", _string(b"\x0a", scope)) + b"".join(spans)  # scope (1), spans (2)
    resource_spans = _framed(b"\x0a", resource_message) + _framed(b"\x12", scope_spans)  # resource (1), scope_spans (2)
    return _framed(b"\x0a", resource_spans)  # resource_spans (1)


def _key_value(key: str, value: Attribute) -> bytes:
    """A `KeyValue`: key (1), value (2) as an `AnyValue`."""
    return _string(b"\x0a", str(key)) + _framed(b"\x12", _any_value(value))


def _any_value(value: object) -> bytes:
    if value is True:
        return b"\x10\x01"  # bool_value (2)
    if value is False:
        return b"\x10\x00"
    if isinstance(value, int) and value in _INT64:
        return b"\x18" + _varint(value & _U64)  # int_value (3), int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)  # double_value (4), fixed64
    text = value if isinstance(value, str) else str(value)
    return _string(b"\x0a", text[:MAX_VALUE_CHARS])  # string_value (1)


def _string(tag: bytes, text: str) -> bytes:
    # A lone surrogate (in a caller's `user`, say) must not make invalid UTF-8, for which a
    # collector would refuse the whole batch.
    return _framed(tag, text.encode("utf-8", "replace"))


def _framed(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_SMALL[size] if size < 128 else _varint(size)) + payload


def _varint(number: int) -> bytes:
    if number < 128:
        return _SMALL[number]
    out = bytearray()
    while number > 127:
        out.append((number & 127) | 128)
        number >>= 7
    out.append(number)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(128)]
