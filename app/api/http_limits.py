"""Limits on what a client may make the server hold before the app sees a request.

uvicorn's httptools protocol has none: a 16 MB header is buffered whole (each piece copied
onto the last), any number of header fields is accepted, and a client that sends its headers
or its body a byte at a time keeps the connection and the request open for as long as it
likes. `limited_protocol(limits)` is that protocol with the limits added:

- the header bytes of a request (its target and fields, each field counting its name, value
  and 4 bytes) are capped, and so are those of a chunked body's trailer: the bytes read
  while a request's headers, or the trailer after its last chunk, are incomplete are counted
  as they arrive (from the read they begin, or the next one when they begin after other
  bytes), so neither is ever held more than two reads (at most 256 KiB each) past the limit
  however it is split, and those completed in a read that held more (a body, another
  request) are counted exactly;
- so is the number of header fields;
- a request's headers must arrive within `header_timeout_s` of its first byte (or of the
  connection's opening), and its body must keep arriving: at least 64 KiB (or the rest of
  it) every `body_timeout_s` after its headers, so that a large upload at any useful speed
  goes through while a body trickled in is cut off; while the server itself has stopped
  reading (the app has not taken what came) or owes the client a `100 Continue`, the
  client's time starts again.

A request over a limit is answered 431 or 408 in the OpenAI error envelope with
`connection: close`, and one the parser cannot read 400 `malformed_http` (uvicorn's own is
plain text), when the server has not begun an answer on that connection yet; then
the server stops reading requests but drains what the client still sends for a moment
(a lingering close: closing with unread bytes would reset the connection and lose the
answer), and closes. The app never sees a request over a header limit.

The parser was chosen by measurement (docs/benchmarks.md, "HTTP limits"): httptools with
these checks against h11, whose own cap (`h11_max_incomplete_event_size`) covers header
bytes only.
"""

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.settings import GatewaySettings
from protocol import error_payload

__all__ = ["HttpLimits", "LimitedHttpToolsProtocol", "limited_protocol"]

log = logging.getLogger(__name__)

LINGER_S = 2.0  # how long a refused client may go on sending (and be drained) before the close
_FIELD_OVERHEAD = 4  # ": " and CRLF around each field, so exact counts match the wire


_BODY_PROGRESS = 64 * 1024  # body bytes a client must send every body_timeout_s


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int
    max_header_fields: int
    header_timeout_s: float
    body_timeout_s: float

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> "HttpLimits":
        return cls(
            settings.max_header_bytes, settings.max_header_fields, settings.header_timeout_s, settings.body_timeout_s
        )


def limited_protocol(limits: HttpLimits) -> type["LimitedHttpToolsProtocol"]:
    """The protocol class to give uvicorn (`Config(http=...)`), with these limits."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def _answer(status: int, message: str, code: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps(error_payload(message, "invalid_request_error", code=code)).encode()
    lines = [STATUS_LINE[status]]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: " + str(len(body)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with `limits`. The checks on the way of every request are a
    few additions and comparisons; a timer is set only when a request's headers or body do not
    arrive in the read that began them (plus one per connection, for its first request)."""

    limits: ClassVar[HttpLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True  # the next bytes parsed belong to a request's headers
        self._awaiting_body = False
        self._in_request = False  # a byte of the current request has been parsed
        self._wire_header_bytes = 0  # bytes read while the request's headers were incomplete
        self._wire_counts_all = True  # ... and they include the request's first byte
        self._after_chunk_size = False  # a chunk's size line was parsed and none of its data yet
        self._wire_trailer_bytes = 0  # bytes read since, while that held (the last chunk's trailer)
        self._trailer_bytes = 0
        self._over_limit = False  # set by a parser callback just before it aborts the parse
        self._refused = False  # answered (or given up on): what still arrives is dropped
        self._timer: asyncio.TimerHandle | None = None
        self._body_window = 0  # body bytes since the body's timer was armed

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining before the close
        self._unset_keepalive_if_required()
        if self._awaiting_headers:
            if not self._in_request:  # a request begins with this read: every byte is its own
                self._wire_header_bytes, self._wire_counts_all = 0, True
            self._wire_header_bytes += len(data)
        elif self._after_chunk_size:  # this read is that chunk's data, or the last chunk's trailer
            self._wire_trailer_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._over_limit:  # raised by a check below, through the parser
                self._refuse_headers()
                return
            log.info("malformed request from %s: %s", self.client, exc)
            self._give_up(400, "The request is not valid HTTP/1.1.", "malformed_http")
            return
        except httptools.HttpParserUpgrade:
            self._disarm()
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._awaiting_headers:
            if self._wire_header_bytes > self.limits.max_header_bytes:
                self._refuse_headers()
            elif self._in_request and self._timer is None:
                self._arm(self.limits.header_timeout_s, self._headers_late)
        elif self._after_chunk_size and self._wire_trailer_bytes > self.limits.max_header_bytes:
            self._refuse_headers()  # no data followed the size line: it was the last, and this its trailer
        elif self._awaiting_body and self._timer is None:
            self._body_window = 0
            self._arm(self.limits.body_timeout_s, self._body_late)

    # Parser callbacks: a request's own fields are checked once, when they are complete (the
    # bytes read bound them while they arrive). Checking each field in its own callback cost
    # several times as much (docs/benchmarks.md, "HTTP limits").

    def on_message_begin(self) -> None:
        self._in_request = True
        self._trailer_bytes = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._awaiting_headers:  # a trailer after a chunked body: it joins the headers
            self._trailer_bytes += len(name) + len(value) + _FIELD_OVERHEAD
            self._check(self._trailer_bytes, len(self.headers) + 1)
        # uvicorn's own on_header, inline: a call less for every field of every request
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_chunk_header(self) -> None:
        # httptools does not tell the chunk's size: if data follows, this was not the last
        # chunk (on_body); if not, the next reads are the trailer, which httptools holds whole
        # until each field is complete, each piece copied onto the last.
        self._after_chunk_size, self._wire_trailer_bytes = True, 0

    def on_body(self, body: bytes) -> None:
        self._after_chunk_size = False
        self._body_window += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        if self._wire_header_bytes > self.limits.max_header_bytes or not self._wire_counts_all:
            # The read that completed them held more (a body, another request) or missed
            # their beginning: count them exactly.
            self._check(len(self.url) + sum(len(n) + len(v) + _FIELD_OVERHEAD for n, v in self.headers), 0)
        self._check(0, len(self.headers))
        super().on_headers_complete()  # may refuse the target: still this request's headers then
        self._awaiting_headers, self._awaiting_body = False, True
        self._disarm()

    def on_message_complete(self) -> None:
        self._awaiting_headers, self._awaiting_body, self._in_request = True, False, False
        self._after_chunk_size = False
        # The next request counts its own bytes; one beginning in the rest of this read is
        # counted exactly when its headers are complete.
        self._wire_header_bytes, self._wire_counts_all = 0, False
        self._disarm()
        super().on_message_complete()

    def _check(self, header_bytes: int, fields: int) -> None:
        if header_bytes > self.limits.max_header_bytes or fields > self.limits.max_header_fields:
            self._over_limit = True
            raise OverflowError("request headers over the limit")  # aborts the parse; data_received answers

    # Deadlines

    def _arm(self, delay: float, callback: Any) -> None:
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._in_request:
            self.transport.close()  # a connection that never sent a byte: nothing to answer
            return
        timeout = self.limits.header_timeout_s
        log.info("request headers from %s not received within %g s", self.client, timeout)
        self._give_up(408, f"The request's headers did not arrive within {timeout:g} s.", "request_timeout")

    def _body_late(self) -> None:
        self._timer = None
        if self.transport.is_closing() or self.cycle is None:
            return
        if self.flow.read_paused or self.cycle.waiting_for_100_continue or self._body_window >= _BODY_PROGRESS:
            # The wait is the server's (the app has not read what came) or the app's (no
            # 100 Continue sent yet), not the client's, or the body is coming at a useful
            # speed: the client's time starts again.
            self._body_window = 0
            self._arm(self.limits.body_timeout_s, self._body_late)
            return
        timeout = self.limits.body_timeout_s
        log.info("request body from %s not received within %g s", self.client, timeout)
        message = f"The request's body did not arrive, or not 64 KiB of it in {timeout:g} s."
        self._give_up(408, message, "request_timeout")

    # Refusals

    def _refuse_headers(self) -> None:
        limits = self.limits
        log.info("request headers from %s over the limit", self.client)
        message = (
            f"The request's headers are too large: at most {limits.max_header_bytes} bytes "
            f"and {limits.max_header_fields} fields."
        )
        self._give_up(431, message, "request_header_fields_too_large")

    def _give_up(self, status: int, message: str, code: str) -> None:
        """Answer `status` if no other answer is under way on the connection, and stop reading."""
        cycle = self.cycle
        if self._awaiting_headers:  # a new request: self.cycle, if any, is the one before it
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # pipelined behind an answer: uvicorn closes after it
                self._refused = True
                self._disarm()
                return
        elif cycle is not None:  # this request's body or trailers
            if cycle.response_started:
                self.transport.close()  # the app answered without the rest of the body
                return
            cycle.disconnected = True  # its receive() sees a disconnect, its answer goes nowhere
            cycle.message_event.set()
        self._refuse(status, message, code)

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._refused = True
        self._disarm()
        self.transport.write(_answer(status, message, code, self.server_state.default_headers))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()  # drain what the client still sends, until it stops or LINGER_S
        self._timer = self.loop.call_later(LINGER_S, self.transport.close)
