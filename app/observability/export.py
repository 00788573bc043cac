"""Where the gateway's finished server spans go: an OTLP/HTTP collector, or memory in tests.

`OtlpExporter.export` runs on the event loop, once a recorded request: it encodes the span
(protocol/otlp.py, about 10 µs) and appends the bytes to a list. A daemon thread wakes every
`delay_s`, or as soon as a batch is full, takes one batch at a time, joins it into one request
and POSTs it. The thread holds the GIL only to join bytes: the encoding was done on the loop
already, so the loop never waits the interpreter's switch interval for it, as it does for an
SDK batch processor encoding hundreds of spans at once.

Nothing a collector does reaches a request, and memory stays bounded: spans wait up to
`max_held` of them and `max_held_bytes` in all (a full buffer drops new ones); a batch is at most
`max_batch` spans and `max_batch_bytes`; a collector that is down or slow costs the thread its
timeout; a refused batch is retried (429, 502, 503, 504, a broken connection: twice, with
backoff; a kept-alive connection the collector closed: at once, on a new one), then dropped.
What became of each span is counted (`counted`, the gateway's `llm_trace_spans_total`).

The exporter reads OpenTelemetry's environment variables for OTLP/HTTP: headers
(OTEL_EXPORTER_OTLP_[TRACES_]HEADERS), timeout, gzip compression, a collector's CA certificate
and a client certificate and key (..._CERTIFICATE, ..._CLIENT_CERTIFICATE, ..._CLIENT_KEY), and
the resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).
"""

import gzip
import http.client
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlsplit

from app.settings import collector_url_error
from protocol.otlp import Attribute, ServerSpan, encode_request, encode_span

__all__ = ["MemorySpans", "OtlpExporter", "SpanSink"]

log = logging.getLogger(__name__)

_RETRIED = frozenset({429, 502, 503, 504})
_STALE = (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected)  # a kept-alive socket closed
_WARN_EVERY_S = 60.0
_DEFAULT_TIMEOUT_S = 10.0

Counted = Callable[[str, int], None]  # (exported | dropped, how many)


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
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        compress: bool = False,
        tls: ssl.SSLContext | None = None,
        counted: Counted | None = None,
        delay_s: float = 1.0,
        max_batch: int = 512,
        max_batch_bytes: int = 4 << 20,  # collectors refuse large bodies (the OpenTelemetry Collector: 20 MiB)
        max_held: int = 4096,
        max_held_bytes: int = 32 << 20,
        backoff_s: tuple[float, ...] = (0.5, 1.0),  # before each retry
    ) -> None:
        if (error := collector_url_error(endpoint)) is not None:
            raise ValueError(error)
        url = urlsplit(f"{endpoint.rstrip('/')}/v1/traces")
        self._host, self._port, self._path = url.hostname or "", url.port, url.path
        self._https, self._tls = url.scheme == "https", tls
        self._target = url.geturl()
        self._resource, self._scope = dict(resource), scope
        self._headers = {**(headers or {}), "Content-Type": "application/x-protobuf"}
        if compress:
            self._headers["Content-Encoding"] = "gzip"
        self._timeout_s, self._delay_s, self._backoff_s = timeout_s, delay_s, backoff_s
        self._max_batch, self._max_batch_bytes = max_batch, max_batch_bytes
        self._max_held, self._max_held_bytes = max_held, max_held_bytes
        self._counted = counted
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._connection: http.client.HTTPConnection | None = None
        self._warned = -_WARN_EVERY_S
        self.exported = 0  # spans a collector accepted (counted under the lock)
        self.dropped = 0  # spans lost: the buffer full, or a batch refused after its retries

    @classmethod
    def from_environment(cls, endpoint: str, service: str, counted: Counted | None = None) -> "OtlpExporter":
        """An exporter configured as OpenTelemetry's own OTLP/HTTP exporter would be, named
        `service` unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name it."""
        from opentelemetry.sdk.resources import Resource  # only when tracing, at start
        from opentelemetry.util.re import parse_env_headers

        def setting(name: str) -> str:
            return (
                os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}")
                or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}")
                or ""
            )

        resource = dict(Resource.create().attributes)
        if str(resource.get("service.name", "unknown_service")).startswith("unknown_service"):
            resource["service.name"] = service
        return cls(
            endpoint,
            {key: value for key, value in resource.items() if isinstance(value, str | bool | int | float)},
            headers=parse_env_headers(setting("HEADERS"), liberal=True),
            timeout_s=_seconds(setting("TIMEOUT")),
            compress=setting("COMPRESSION").lower() == "gzip",
            tls=_tls(setting("CERTIFICATE"), setting("CLIENT_CERTIFICATE"), setting("CLIENT_KEY")),
            counted=counted,
        )

    def export(self, span: ServerSpan) -> None:
        encoded = encode_span(span)
        with self._lock:
            if (
                self._closing
                or len(self._held) >= self._max_held
                or self._held_bytes + len(encoded) > self._max_held_bytes
            ):
                self._count("dropped", 1)
                full = not self._closing
            else:
                full = False
                self._held.append(encoded)
                self._held_bytes += len(encoded)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
                    self._thread.start()
            ready = len(self._held) >= self._max_batch or self._held_bytes >= self._max_batch_bytes
        if full:
            self._warn("dropped a span: %d are waiting for the collector at %s", len(self._held), self._target)
        if ready:
            self._wake.set()

    def close(self) -> None:
        """Send what is held (one try a batch, for at most the timeout and a second), then stop."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join(self._timeout_s + 1)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._delay_s)
            self._wake.clear()
            while batch := self._take():
                try:
                    sent = self._send(batch)
                except Exception:  # a bug here must not stop the thread: later spans would pile up
                    log.exception("could not export %d spans", len(batch))
                    sent = False
                with self._lock:
                    self._count("exported" if sent else "dropped", len(batch))
            if self._closing:
                if self._connection is not None:
                    self._connection.close()
                return

    def _take(self) -> list[bytes]:
        """The next batch (its spans stay counted against the buffer until taken)."""
        with self._lock:
            size, count = 0, 0
            for encoded in self._held[: self._max_batch]:
                if count and size + len(encoded) > self._max_batch_bytes:
                    break
                size += len(encoded)
                count += 1
            batch, self._held = self._held[:count], self._held[count:]
            self._held_bytes -= size
            return batch

    def _count(self, outcome: str, spans: int) -> None:
        """Under the lock."""
        if outcome == "exported":
            self.exported += spans
        else:
            self.dropped += spans
        if self._counted is not None:
            self._counted(outcome, spans)

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
                self._disconnect()
                failure = f"{type(error).__name__}: {error}"
                continue
            if 200 <= status < 300:
                return True
            failure = f"HTTP {status}"
            if status not in _RETRIED:
                break
        self._warn("dropped %d spans: the collector at %s answered %s", len(spans), self._target, failure)
        return False

    def _post(self, body: bytes) -> int:
        reused = self._connection is not None
        try:
            return self._request(body)
        except _STALE:
            if not reused:
                raise
            self._disconnect()  # the collector closed the kept-alive connection: once more, on a new one
            return self._request(body)

    def _request(self, body: bytes) -> int:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout_s, context=self._tls
                )
            else:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)
        self._connection.request("POST", self._path, body, self._headers)
        response = self._connection.getresponse()
        response.read()
        if response.will_close:
            self._disconnect()
        return response.status

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def _warn(self, message: str, *args: object) -> None:
        """Log `message`, at most once a minute: a collector that is down must not flood the log."""
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:
            self._warned = now
            log.warning(message, *args)


def _seconds(value: str) -> float:
    """OTEL_EXPORTER_OTLP_TIMEOUT in seconds (the SDK's reading: a bad value warns, the default holds)."""
    if not value:
        return _DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if seconds <= 0:
        log.warning("OTEL_EXPORTER_OTLP_TIMEOUT=%r is no number of seconds; using %s", value, _DEFAULT_TIMEOUT_S)
        return _DEFAULT_TIMEOUT_S
    return seconds


def _tls(ca_file: str, certificate: str, key: str) -> ssl.SSLContext | None:
    """A TLS context trusting `ca_file` and presenting `certificate` and `key`, when given."""
    if not (ca_file or certificate):
        return None
    context = ssl.create_default_context(cafile=ca_file or None)
    if certificate:
        context.load_cert_chain(certificate, key or None)
    return context
