"""HTTP limits against a real gateway process, over raw sockets so the test controls every byte:
a huge header or trailer, thousands of fields or trailers, headers and bodies sent a byte at a
time, a connection that never speaks, a pipelined request over the limit, requests that are not
HTTP, one and several workers; and the requests that must still work: at the limits, kept
alive, idle between requests, sent in pieces (chunks and trailers too), pipelined behind a
large body, `Expect: 100-continue`.

The limits come from the settings the gateway is started with (LIMITS)."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from harness.servers import Redis, ServerProcess, free_port

LIMITS = {"max_header_bytes": 64 * 1024, "max_header_fields": 50, "header_timeout_s": 1.0, "body_timeout_s": 1.0}
MAX_BYTES = int(LIMITS["max_header_bytes"])
MAX_FIELDS = int(LIMITS["max_header_fields"])
HEADER_TIMEOUT_S = LIMITS["header_timeout_s"]
BODY_TIMEOUT_S = LIMITS["body_timeout_s"]
MARGIN_S = 1.0  # a loaded two-core machine: timers fire late, processes get scheduled late
CHAT = "/v1/chat/completions"
CHAT_BODY = json.dumps({"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
FIELD_OVERHEAD = 4  # ": " and CRLF, counted with each field's name and value


def _start(engine: ServerProcess, log_dir: Path, **extra: str) -> ServerProcess:
    env = {f"SWITCHYARD_{name.upper()}": str(value) for name, value in LIMITS.items()}
    env |= {"SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url]}]), **extra}
    port = free_port()
    return ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")


@pytest.fixture(scope="module")
def gateway(counting_engine: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    server = _start(counting_engine, log_dir).wait_ready()
    yield server
    server.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error_code(self) -> str:
        error = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return str(error["code"])


class Client:
    """One raw connection: bytes out exactly as given, answers parsed by hand."""

    def __init__(self, server: ServerProcess, timeout: float = 10.0) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self._buffer = b""

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_in_background(self, data: bytes, pause_s: float = 0.0, piece: int = 1 << 20) -> threading.Thread:
        """Sends `data` in pieces `pause_s` apart from a thread, until done or the server hangs up."""

        def run() -> None:
            try:
                for start in range(0, len(data), piece):
                    self.sock.sendall(data[start : start + piece])
                    time.sleep(pause_s)
            except OSError:
                pass  # refused: the server closed its side

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def answer(self) -> Answer:
        while b"\r\n\r\n" not in self._buffer:
            assert self._fill(), f"connection closed before an answer; got {self._buffer!r}"
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self._buffer) < length:
            assert self._fill(), "connection closed inside an answer"
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return Answer(int(status_line.split()[1]), headers, body)

    def closed(self) -> bool:
        """Whether the server ends the connection (within the socket's timeout) with nothing more sent."""
        try:
            return not self._fill() and not self._buffer
        except ConnectionResetError:
            return True


def _request(method: str = "GET", target: str = "/health", fields: list[tuple[str, str]] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", *(f"{n}: {v}" for n, v in fields or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _huge_header(gateway: ServerProcess) -> float:
    """Sends one 16 MB header; checks the 431 and the close; the seconds until the answer."""
    head = b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Big: "
    with Client(gateway) as client:
        started = time.monotonic()
        sender = client.send_in_background(head + b"a" * (16 << 20) + b"\r\n\r\n")
        answer = client.answer()
        elapsed = time.monotonic() - started
        assert answer.status == 431
        assert answer.headers["connection"] == "close"
        assert answer.error_code() == "request_header_fields_too_large"
        assert client.closed()
        sender.join(10)
    return elapsed


def test_a_16_mb_header_is_refused_at_once_and_never_held(gateway: ServerProcess) -> None:
    _huge_header(gateway)  # what the first refusal allocates once (logging, code paths) is not growth
    before = _rss_kib(gateway.process.pid)
    times = [_huge_header(gateway) for _ in range(4)]
    growth_kib = _rss_kib(gateway.process.pid) - before
    assert max(times) < 2.0, times
    # uvicorn's httptools protocol without the limit grew by tens of MB per such request.
    assert growth_kib < 4 * 1024, f"the gateway's RSS grew by {growth_kib} KiB over 4 huge headers"
    assert httpx.get(gateway.url + "/health").status_code == 200


def test_5000_header_fields_are_refused(gateway: ServerProcess) -> None:
    fields = [(f"x-f{i}", "v") for i in range(5000)]
    request = _request(fields=fields)
    assert len(request) < MAX_BYTES  # the count refuses it, not the size
    with Client(gateway) as client:
        client.send_in_background(request)
        answer = client.answer()
        assert answer.status == 431, answer
        assert answer.error_code() == "request_header_fields_too_large"
        assert client.closed()


def _fields_of_total(total: int, count: int) -> list[tuple[str, str]]:
    """`count` fields (besides Host) whose counted bytes, with the target "/health", add up to `total`."""
    host = len("Host") + len("gateway") + FIELD_OVERHEAD
    rest = total - len("/health") - host - count * (len("x-pad-00") + FIELD_OVERHEAD)
    sizes = [rest // count + (1 if i < rest % count else 0) for i in range(count)]
    return [(f"x-pad-{i:02}", "v" * size) for i, size in enumerate(sizes)]


def test_headers_at_the_limits_pass_and_one_more_byte_or_field_does_not(gateway: ServerProcess) -> None:
    # Wire bytes hold a few more than the counted ones ("GET ", " HTTP/1.1"): leave room for them.
    at_limit = _fields_of_total(MAX_BYTES - 32, MAX_FIELDS - 1)  # with Host: MAX_FIELDS fields
    with Client(gateway) as client:
        client.send(_request(fields=at_limit))
        assert client.answer().status == 200
        client.send(_request(fields=at_limit))  # and the connection goes on serving
        assert client.answer().status == 200

    one_byte_over = _fields_of_total(MAX_BYTES + 1, MAX_FIELDS - 1)
    one_field_over = [*at_limit[:10], ("x-extra", "1"), *at_limit[10:]]
    for fields in (one_byte_over, one_field_over):
        with Client(gateway) as client:
            client.send_in_background(_request(fields=fields))
            assert client.answer().status == 431
            assert client.closed()


def test_a_pipelined_request_over_the_limit_ends_the_connection_after_the_answer_before_it(
    gateway: ServerProcess,
) -> None:
    """Sent at once: the first is answered, and the second is never served. Read together, its
    headers are complete, so only an exact count of them can refuse it and there is no room for
    its 431 before the first answer: the connection just ends. Read apart (a busy machine may
    hand the server the bytes in two reads), it gets its 431, then the connection ends."""
    with Client(gateway) as client:
        client.send(_request() + _request(fields=_fields_of_total(MAX_BYTES + 1, 10)))
        assert client.answer().status == 200
        if not client.closed():
            assert client.answer().status == 431
            assert client.closed()


def test_trailers_count_against_the_limits(gateway: ServerProcess) -> None:
    body = CHAT_BODY.encode()
    fields = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    trailers = "".join(f"x-t{i}: v\r\n" for i in range(5000)).encode()
    chunked = b"%x\r\n%s\r\n0\r\n" % (len(body), body) + trailers + b"\r\n"
    with Client(gateway) as client:
        client.send_in_background(_request("POST", CHAT, fields) + chunked)
        answer = client.answer()
        assert answer.status == 431, answer
        assert client.closed()
    with Client(gateway) as client:  # a chunked body with a trailer or two is fine
        client.send(_request("POST", CHAT, fields) + chunked[: -len(trailers) - 2] + b"x-t: v\r\n\r\n")
        assert client.answer().status == 200


def test_headers_sent_a_byte_at_a_time_are_cut_off(gateway: ServerProcess) -> None:
    with Client(gateway) as client:
        started = time.monotonic()
        client.send_in_background(_request(fields=[("x-slow", "y" * 100)]), pause_s=0.2, piece=1)
        answer = client.answer()
        elapsed = time.monotonic() - started
        assert answer.status == 408
        assert answer.error_code() == "request_timeout"
        assert client.closed()
    assert HEADER_TIMEOUT_S <= elapsed + 0.05 < HEADER_TIMEOUT_S + MARGIN_S, elapsed


def test_a_body_sent_a_byte_at_a_time_is_cut_off(gateway: ServerProcess) -> None:
    body = CHAT_BODY.encode()
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    with Client(gateway) as client:
        client.send(_request("POST", CHAT, fields))
        started = time.monotonic()
        client.send_in_background(body, pause_s=0.2, piece=1)
        answer = client.answer()
        elapsed = time.monotonic() - started
        assert answer.status == 408
        assert answer.error_code() == "request_timeout"
        assert client.closed()
    assert BODY_TIMEOUT_S <= elapsed + 0.05 < BODY_TIMEOUT_S + MARGIN_S, elapsed


def test_a_large_body_that_keeps_coming_is_not_cut_off(gateway: ServerProcess) -> None:
    """An upload takes as long as it takes while it keeps coming (64 KiB every half of
    body_timeout_s, so that every window holds a piece even when a sleep wakes up to half a
    window late; two and a half times the body's time in all): only a trickle is cut off."""
    padding = "x" * (320 * 1024)
    body = json.dumps({"model": "nope", "messages": [{"role": "user", "content": padding}]}).encode()
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    with Client(gateway) as client:
        client.send(_request("POST", CHAT, fields))
        started = time.monotonic()
        client.send_in_background(body, pause_s=0.5 * BODY_TIMEOUT_S, piece=64 * 1024)
        answer = client.answer()
        elapsed = time.monotonic() - started
    assert answer.status != 408, answer
    assert answer.error_code() == "model_not_found"  # read whole, then answered by the app
    assert elapsed > 2 * BODY_TIMEOUT_S, elapsed


def test_a_connection_that_never_speaks_is_closed(gateway: ServerProcess) -> None:
    with Client(gateway) as client:
        started = time.monotonic()
        assert client.closed()
    assert time.monotonic() - started < HEADER_TIMEOUT_S + MARGIN_S


def test_ordinary_requests_keep_working(gateway: ServerProcess) -> None:
    """Keep-alive reuse, a pause between requests longer than the header timeout (the connection
    is idle, not slow), headers and a body that arrive in pieces within their time, a chat."""
    body = CHAT_BODY.encode()
    post = _request("POST", CHAT, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    with Client(gateway) as client:
        for _ in range(3):
            client.send(post + body)
            answer = client.answer()
            assert answer.status == 200, answer
            assert json.loads(answer.body)["object"] == "chat.completion"
        time.sleep(HEADER_TIMEOUT_S + 0.5)  # idle on a kept-alive connection: no request begun
        pieces = [post[:10], post[10:40], post[40:], body[:5], body[5:]]
        for piece in pieces:
            client.send(piece)
            time.sleep(HEADER_TIMEOUT_S / 2 / len(pieces))
        assert client.answer().status == 200
    with httpx.Client(base_url=gateway.url) as http:
        for _ in range(3):
            assert http.post(CHAT, content=body, headers={"content-type": "application/json"}).status_code == 200


def test_a_client_waiting_for_100_continue_is_not_cut_off(gateway: ServerProcess) -> None:
    body = CHAT_BODY.encode()
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Expect", "100-continue")]
    with Client(gateway) as client:
        client.send(_request("POST", CHAT, fields))
        assert client.answer().status == 100
        client.send(body)
        assert client.answer().status == 200


def test_several_workers_apply_the_limits(counting_engine: ServerProcess, log_dir: Path) -> None:
    redis = Redis()
    server = _start(counting_engine, log_dir, SWITCHYARD_WORKERS="2", SWITCHYARD_REDIS_URL=redis.url)
    try:
        server.wait_ready()
        for _ in range(4):  # the kernel hands connections to either worker
            _huge_header(server)
            with Client(server) as client:
                client.send_in_background(_request(fields=[(f"x-f{i}", "v") for i in range(MAX_FIELDS)]))
                assert client.answer().status == 431
        assert httpx.get(server.url + "/health").status_code == 200
    finally:
        server.stop()
        redis.stop()


def _huge_trailer(gateway: ServerProcess) -> float:
    """Sends a chunked body whose trailer holds one 16 MB field, never ended; checks the 431
    (before the body's time is out: a 408 would mean the trailer was held until then) and the
    close; the seconds until the answer."""
    body = CHAT_BODY.encode()
    fields = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    start = _request("POST", CHAT, fields) + b"%x\r\n%s\r\n0\r\nX-T: " % (len(body), body)
    with Client(gateway) as client:
        started = time.monotonic()
        sender = client.send_in_background(start + b"a" * (16 << 20))
        answer = client.answer()
        elapsed = time.monotonic() - started
        assert answer.status == 431, answer
        assert answer.error_code() == "request_header_fields_too_large"
        assert client.closed()
        sender.join(10)
    return elapsed


def test_a_16_mb_trailer_is_refused_at_once_and_never_held(gateway: ServerProcess) -> None:
    _huge_trailer(gateway)
    before = _rss_kib(gateway.process.pid)
    times = [_huge_trailer(gateway) for _ in range(4)]
    growth_kib = _rss_kib(gateway.process.pid) - before
    assert max(times) < BODY_TIMEOUT_S, times
    assert growth_kib < 4 * 1024, f"the gateway's RSS grew by {growth_kib} KiB over 4 huge trailers"


def test_chunks_and_trailers_in_pieces_pass(gateway: ServerProcess) -> None:
    """A chunk's size line in one read and its data (over the header limit) in the next, and a
    small trailer split across reads: neither is a header over the limit."""
    content = "x" * (2 * MAX_BYTES)
    body = json.dumps({"model": "counting", "messages": [{"role": "user", "content": content}], "max_tokens": 2})
    fields = [("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]
    with Client(gateway) as client:
        client.send(_request("POST", CHAT, fields) + b"%x\r\n" % len(body))
        time.sleep(0.2)
        client.send(body.encode() + b"\r\n0\r\nX-T: v")
        time.sleep(0.2)
        client.send(b"v" * 100)
        time.sleep(0.2)
        client.send(b"\r\n\r\n")
        answer = client.answer()
        assert answer.status == 200, answer


def test_a_request_pipelined_behind_a_large_body_is_answered(gateway: ServerProcess) -> None:
    """The first request's body (over the header limit, well under the body limit) and the
    start of the second's headers arrive in one read, the rest of them in the next: the second
    request's headers are counted on their own."""
    content = "x" * (100 * 1024)
    body = json.dumps({"model": "counting", "messages": [{"role": "user", "content": content}], "max_tokens": 2})
    fields = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    second = _request()
    with Client(gateway) as client:
        client.send(_request("POST", CHAT, fields) + body.encode() + second[:20])
        time.sleep(0.3)
        client.send(second[20:])
        first = client.answer()
        assert first.status == 200, first
        assert json.loads(first.body)["object"] == "chat.completion"
        assert client.answer().status == 200


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello to the plain port
        b"GET /health HTTP/1.1\r\nHost: gateway\r\nX-Bad Name: v\r\n\r\n",
        b"GET http://[::1/health HTTP/1.1\r\nHost: gateway\r\n\r\n",  # refused by uvicorn, not the parser
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["garbage-request-line", "bad-field-name", "bad-url", "bad-chunk-size"],
)
def test_malformed_http_is_a_400_in_the_envelope(gateway: ServerProcess, request_bytes: bytes) -> None:
    """Alone, and after a request answered on the same connection."""
    for before in (b"", _request()):
        with Client(gateway) as client:
            if before:
                client.send(before)
                assert client.answer().status == 200
            client.send(request_bytes)
            answer = client.answer()
            assert answer.status == 400, answer
            assert answer.headers["content-type"] == "application/json"
            assert answer.headers["connection"] == "close"
            assert answer.error_code() == "malformed_http"
            assert json.loads(answer.body)["error"]["type"] == "invalid_request_error"
            assert client.closed()
    assert httpx.get(gateway.url + "/health").status_code == 200
