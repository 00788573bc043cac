"""Where the gateway's finished server spans go: an OTLP/HTTP collector, or memory in tests.

`OtlpExporter.export` runs on the event loop, once a recorded request: it encodes the span
(protocol/otlp.py, a few microseconds) and appends the bytes to a list. A daemon thread wakes
every `delay_s`, or as soon as a batch is full, joins what is there into one request and POSTs
it. The thread holds the GIL only to join bytes: the encoding was done on the loop already, so
it never makes the loop wait the interpreter's switch interval for it, as an SDK batch
processor encoding hundreds of spans at once does.

Nothing a collector does reaches a request: a full buffer drops new spans (counted), a
collector that is down or slow costs the thread its timeout, and a refused batch is retried
(429, 502, 503, 504, a broken connection: twice, with backoff) then dropped and counted.
The exporter honors OpenTelemetry's environment variables for OTLP/HTTP: headers
(OTEL_EXPORTER_OTLP_[TRACES_]HEADERS), timeout (..._TIMEOUT) and gzip (..._COMPRESSION), and
the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).
"""

import gzip
import http.client
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from protocol.otlp import Attribute, ServerSpan, encode_request, encode_span

__all__ = ["MemorySpans", "OtlpExporter", "SpanSink"]

log = logging.getLogger(__name__)

_RETRIED = frozenset({429, 502, 503, 504})
_WARN_EVERY_S = 60.0


class SpanSink(Protocol):
    """Where finished spans go. `export` runs on the event loop: it must not block."""

    def export(self, span: ServerSpan) -> None: ...

    def close(self) -> None:
        """Send what is still held (within a bound), then stop."""


class MemorySpans:
    """A sink that keeps every finished span: what tests read."""

    def __init__(self) -> None:
        self.spans: list[ServerSpan] = []

    def export(self, span: ServerSpan) -> None:
        self.spans.append(span)

    def close(self) -> None:
        return None


class OtlpExporter:
    """Batches of spans POSTed as OTLP/protobuf to `endpoint`/v1/traces by a thread of its own."""

    def __init__(
        self,
        endpoint: str,
        resource: Mapping[str, Attribute],
        *,
        scope: str = "switchyard.gateway",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        compress: bool = False,
        delay_s: float = 1.0,
        max_batch: int = 512,
        max_held: int = 4096,
        backoff_s: tuple[float, ...] = (0.5, 1.0),  # before each retry
    ) -> None:
        url = urlsplit(f"{endpoint.rstrip('/')}/v1/traces")
        try:
            port = url.port  # a port that is no number is refused here, not in the thread
        except ValueError:
            port = -1
        if url.scheme not in ("http", "https") or not url.hostname or port == -1:
            raise ValueError(f"an OTLP endpoint is an http(s) URL, not {endpoint!r}")
        self._url, self._port = url, port
        self._resource, self._scope = dict(resource), scope
        self._headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout_s, self._delay_s = timeout_s, delay_s
        self._max_batch, self._max_held, self._backoff_s = max_batch, max_held, backoff_s
        self._held: list[bytes] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._warned = -_WARN_EVERY_S
        self.exported = 0  # spans a collector accepted (counted under the lock)
        self.dropped = 0  # spans lost: the buffer full, or a batch refused after its retries

    @classmethod
    def from_environment(cls, endpoint: str, service: str) -> "OtlpExporter":
        """An exporter configured as OpenTelemetry's own OTLP/HTTP exporter would be."""
        from opentelemetry.sdk.resources import Resource  # only when tracing, at start
        from opentelemetry.util.re import parse_env_headers

        def setting(name: str) -> str | None:
            return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")

        resource = Resource.create({"service.name": service}).attributes
        return cls(
            endpoint,
            {key: value for key, value in resource.items() if isinstance(value, str | bool | int | float)},
            headers=parse_env_headers(setting("HEADERS") or "", liberal=True),
            timeout_s=float(setting("TIMEOUT") or 10),
            compress=(setting("COMPRESSION") or "").lower() == "gzip",
        )

    def export(self, span: ServerSpan) -> None:
        encoded = encode_span(span)
        with self._lock:
            if self._closing or len(self._held) >= self._max_held:
                self.dropped += 1
                return
            self._held.append(encoded)
            held = len(self._held)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
                self._thread.start()
        if held >= self._max_batch:
            self._wake.set()

    def close(self) -> None:
        """Send what is held (for at most the timeout), then stop the thread."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(self._timeout_s + 1)  # one try on the way out

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            with self._lock:
                held, self._held = self._held, []
                closing = self._closing
            for start in range(0, len(held), self._max_batch):
                batch = held[start : start + self._max_batch]
                try:
                    sent = self._send(batch)
                except Exception:  # a bug here must not stop the thread: later spans would pile up
                    log.exception("could not export %d spans", len(batch))
                    sent = False
                with self._lock:
                    if sent:
                        self.exported += len(batch)
                    else:
                        self.dropped += len(batch)
            if closing:
                if self._connection is not None:
                    self._connection.close()
                return

    def _send(self, spans: list[bytes]) -> bool:
        """POST one batch, retried while that may help; whether a collector took it."""
        body = encode_request(self._resource, self._scope, spans)
        if "Content-Encoding" in self._headers:
            body = gzip.compress(body)
        failure = ""
        for backoff in (0.0, *self._backoff_s):
            if backoff and self._closing:
                break  # on the way out, one try only
            time.sleep(backoff)
            try:
                status = self._post(body)
            except (OSError, http.client.HTTPException) as error:
                self._reconnect()
                failure = f"{type(error).__name__}: {error}"
                continue
            if 200 <= status < 300:
                return True
            failure = f"HTTP {status}"
            if status not in _RETRIED:
                break
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning("dropped %d spans: the collector at %s answered %s", len(spans), self._url.geturl(), failure)
        return False

    def _post(self, body: bytes) -> int:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
            self._connection = kind(self._url.hostname or "", self._port, timeout=self._timeout_s)
        path = self._url.path + (f"?{self._url.query}" if self._url.query else "")
        self._connection.request("POST", path, body, self._headers)
        response = self._connection.getresponse()
        response.read()
        if response.will_close:
            self._reconnect()
        return response.status

    def _reconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None
