"""An OpenTelemetry collector's OTLP/HTTP trace endpoint on a real socket, for tests: it decodes
what it is sent with opentelemetry-proto's classes, records it, and answers the statuses it is
told to (then 200)."""

import gzip
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from harness.servers import free_port

__all__ = ["Collector", "collector"]


@dataclass
class Collector:
    port: int
    statuses: list[int] = field(default_factory=list)  # answered in turn, then 200
    delay_s: float = 0.0  # before each answer
    started: int = 0  # requests begun (read or not)
    hang_up: bool = False  # close each connection after answering, as a collector closing idle ones does
    received: list[tuple[str, dict[str, str], ExportTraceServiceRequest]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[Span]:
        """Every span accepted, in the order received."""
        return [
            span
            for _, _, request in self.received
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]

    def span_ids(self) -> list[int]:
        return [int.from_bytes(span.span_id, "big") for span in self.spans()]


@contextmanager
def collector() -> Iterator[Collector]:
    """A collector listening on a free loopback port while the block runs."""
    state = Collector(free_port())
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            with lock:
                state.started += 1
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            threading.Event().wait(state.delay_s)
            with lock:
                status = state.statuses.pop(0) if state.statuses else 200
                if status == 200:
                    request = ExportTraceServiceRequest.FromString(body)
                    state.received.append((self.path, dict(self.headers), request))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            if state.hang_up:
                self.close_connection = True  # without saying so: the client finds out on its next request

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
