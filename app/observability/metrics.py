"""The gateway's Prometheus metrics (the names the README lists), served on `/metrics`.

The names are the ones users of LLM serving stacks expect (`llm_requests_total`,
`llm_request_duration_seconds`, ...), plus time to first token and inter-token latency with
buckets for LLM latencies. Every label value comes from a bounded set: a route of the API,
a model some replica serves (else `other`), a configured pool and region, a status class,
a shed reason. Queue depth and breaker states are read from the live objects at scrape time.

With several workers (`PROMETHEUS_MULTIPROC_DIR` set before the process starts), every
worker writes its values to files there and a scrape, answered by any worker, sums them:
counters and histograms over all workers that ever ran, gauges over the live ones (a
breaker shows the worst state any worker sees). Each worker then copies its queue depth and
breaker states into those files every `refreshing` interval as well as at scrape time.

A series that appears at its first increment holds that increment in its first sample, which
no `rate()` sees, and a ratio over a series that does not exist yet is no data, not 0. So the
label sets known in advance exist at 0 from the start (every route's status classes for the
model `other`, every shed reason), and a label set's first use makes its siblings at 0 (every
status class of a route and model; every engine error kind of a pool and region once it has
answered, every pool's retries once its replicas are known). Where values are only known at
first use (a model's histograms in a pool), that first use stays hidden from `rate()`.
The request middleware that counts and times the API's requests also makes each one's
context (app/context.py) and writes its access line (`app.access`); the server span is
app/observability/tracing.py's.
"""

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.context import RequestContext, begin
from app.errors import Overloaded, RateLimited, TenantOverShare
from app.observability.usage import UsageLedger
from protocol import usage_count
from protocol.background import running

__all__ = ["GatewayMetrics", "RequestMetrics", "StreamTimer"]

access_log = logging.getLogger("app.access")

ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/predict"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
STATUS_CLASSES = ("2xx", "4xx", "5xx")  # those the SLOs and dashboards read (1xx, 3xx: made at first use)
ENGINE_ERROR_KINDS = ("connect", "timeout", "overloaded", "server_error", "stream_broken")
SHED_REASONS = (Overloaded.code, TenantOverShare.code, RateLimited.code)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class _Family:
    """A labelled metric's children by their label values. prometheus_client's `labels()`
    checks and locks on every call: a tenth of the gateway's time per request, measured.

    `siblings`: the last label's known values. A child's first use makes the children with
    the same other labels and each of these (at 0), so a sibling's first increment is a
    change that `rate()` sees."""

    __slots__ = ("_children", "_siblings", "metric")

    def __init__(self, metric: Any, siblings: tuple[str, ...] = ()) -> None:
        self.metric = metric
        self._siblings = siblings
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            for sibling in self._siblings:
                self._child((*values[:-1], sibling))
            child = self._child(values)
        return child

    def _child(self, values: tuple[str, ...]) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class GatewayMetrics:
    """`queued()`: requests waiting for capacity; `breakers()`: (pool, replica, state) rows. Both
    are read at scrape time."""

    def __init__(
        self,
        queued: Callable[[], int] = lambda: 0,
        breakers: Callable[[], Iterable[tuple[str, str, str]]] = list,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.usage = UsageLedger()  # per tenant and minute, for the console's usage page
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self._scraped = self.registry
        if self.multiprocess:
            self._scraped = CollectorRegistry()
            MultiProcessCollector(self._scraped)  # type: ignore[no-untyped-call]
        r = self.registry
        request_labels = ["route", "model", "status_class"]
        self.requests = _Family(Counter("llm_requests", "Requests answered, by route, model and status class.",
                                request_labels, registry=r), siblings=STATUS_CLASSES)  # fmt: skip
        self.in_progress = _Family(Gauge("llm_requests_in_progress", "Requests being answered, by route.",
                                         ["route"], registry=r, multiprocess_mode="livesum"))  # fmt: skip
        self.duration = _Family(Histogram(
            "llm_request_duration_seconds", "Time from a request's arrival to its answer's last byte.",
            request_labels, buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        engine_labels = ["model", "pool", "region"]
        self.ttft = _Family(Histogram(
            "llm_time_to_first_token_seconds", "Time from a streamed request's arrival to its first event.",
            engine_labels, buckets=TTFT_BUCKETS, registry=r,
        ))  # fmt: skip
        self.itl = _Family(Histogram(
            "llm_inter_token_latency_seconds", "Time between a stream's events after the first.",
            engine_labels, buckets=ITL_BUCKETS, registry=r,
        ))  # fmt: skip
        self.generation_tokens = _Family(Histogram(
            "llm_generation_tokens", "Completion tokens per answer (a stream's content events).",
            engine_labels, buckets=TOKEN_BUCKETS, registry=r,
        ))  # fmt: skip
        self.generation_latency = _Family(Histogram(
            "llm_generation_latency_seconds", "Time an engine spent answering: first to last byte of a stream, "
            "the whole exchange otherwise.", engine_labels, buckets=LATENCY_BUCKETS, registry=r,
        ))  # fmt: skip
        self.engine_errors = _Family(
            Counter(
                "llm_engine_errors",
                "Engine failures seen by the gateway, by kind.",
                ["pool", "region", "kind"],
                registry=r,
            ),
            siblings=ENGINE_ERROR_KINDS,
        )
        self.shed = _Family(
            Counter("llm_shed", "Requests refused to protect the engines, by reason.", ["reason"], registry=r),
            siblings=SHED_REASONS,
        )
        self.retries = _Family(
            Counter("llm_retries", "Attempts after a request's first, by pool.", ["pool"], registry=r)
        )
        self.replays = Counter("llm_idempotent_replays", "Answers replayed for a repeated Idempotency-Key.", registry=r)
        self.trace_spans = _Family(
            Counter(
                "llm_trace_spans", "Recorded server spans, by outcome: exported or dropped.", ["outcome"], registry=r
            ),
            siblings=("exported", "dropped"),
        )
        self.queue_depth = Gauge("llm_queue_depth", "Requests waiting for an engine (admission queue).",
                                 registry=r, multiprocess_mode="livesum")  # fmt: skip
        self.breaker_state = Gauge(
            "llm_breaker_state", "Each replica's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["pool", "replica"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self._queued = queued
        self._breakers = breakers
        self._serving: set[tuple[str, str]] = set()  # (pool, region) pairs that have answered
        for route in sorted(ROUTES):
            self.requests(route, "other", STATUS_CLASSES[0])
            self.in_progress(route)
        self.shed(SHED_REASONS[0])

    def refresh(self) -> None:
        """Copy the live objects' state into the gauges."""
        self.queue_depth.set(self._queued())
        rows = list(self._breakers())
        if not self.multiprocess:  # a removed replica's row goes (files keep theirs: workers can't remove)
            self.breaker_state.clear()
        for pool, replica, state in rows:
            self.breaker_state.labels(pool, replica).set(BREAKER_STATES[state])
            self.retries(pool)

    def exposition(self) -> bytes:
        """The Prometheus text of a scrape: this process's metrics, or every worker's."""
        self.refresh()
        return generate_latest(self._scraped)

    @asynccontextmanager
    async def refreshing(self, interval: float) -> AsyncIterator[None]:
        """Refresh the gauges every `interval` seconds while inside: with several workers, a
        scrape answered by one still sees the others' recent state."""

        async def loop() -> None:
            while True:
                self.refresh()
                await asyncio.sleep(interval)

        async with running(loop()):
            yield

    def _answering(self, pool: str, region: str) -> None:
        if (pool, region) not in self._serving:
            self._serving.add((pool, region))
            self.engine_errors(pool, region, ENGINE_ERROR_KINDS[0])

    def stream(self, context: RequestContext, pool: str, region: str) -> "StreamTimer":
        self._answering(pool, region)
        return StreamTimer(self, (context.model, pool, region), context)

    def answered(self, context: RequestContext, pool: str, region: str, body: bytes, seconds: float) -> None:
        """A whole (non-streamed) answer: its completion tokens and how long the engine took."""
        self._answering(pool, region)
        labels = (context.model, pool, region)
        self.generation_latency(*labels).observe(seconds)
        tokens = usage_count(body, "completion_tokens")
        if tokens is not None:
            self.generation_tokens(*labels).observe(tokens)
        context.tokens = usage_count(body, "total_tokens")


class StreamTimer:
    """Times and counts one stream's events as the proxy relays them.

    Inter-token latency is per event, as the client sees them: the gap before a chunk for its
    first event, and none for the others that arrived with it (an engine may send several at
    once), so its mean is the stream's mean gap between tokens."""

    __slots__ = ("_context", "_first", "_labels", "_last", "_metrics", "_tokens", "_usage")

    def __init__(self, metrics: GatewayMetrics, labels: tuple[str, str, str], context: RequestContext) -> None:
        self._metrics = metrics
        self._labels = labels
        self._context = context
        self._first: float | None = None
        self._last = 0.0
        self._tokens = 0
        self._usage = b""  # the last chunk that reported usage

    def relayed(self, data: bytes) -> None:
        events = data.count(b"data: ") - data.count(b"data: [DONE]")
        if not events:
            return
        now = time.perf_counter()
        if self._first is None:
            self._first = now
            self._context.first_token_s = now - self._context.started
            self._metrics.ttft(*self._labels).observe(self._context.first_token_s)
        else:
            self._metrics.itl(*self._labels).observe(now - self._last)
        for _ in range(events - 1):  # those that came with the chunk's first
            self._metrics.itl(*self._labels).observe(0.0)
        self._last = now
        self._tokens += events
        if b'"total_tokens"' in data:
            self._usage = data

    def ended(self) -> None:
        """The stream ran to its end."""
        if self._first is not None:
            self._metrics.generation_latency(*self._labels).observe(self._last - self._first)
            self._metrics.generation_tokens(*self._labels).observe(self._tokens)

    def closed(self) -> None:
        """The stream is over, however it ended (the context tells its callbacks once)."""
        total = usage_count(self._usage, "total_tokens") if self._usage else None
        self._context.tokens = total if total is not None else self._tokens
        self._context.stream_over(self._tokens, total)


class RequestMetrics:
    """Counts and times the API's requests, to their answer's last byte (streams included)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = scope.get("path") if scope["type"] == "http" else None
        if route not in ROUTES:
            await self.app(scope, receive, send)
            return
        context = begin(scope)
        started = context.started
        metrics, status = self.metrics, 500
        metrics.in_progress(route).inc()

        headers: list[tuple[bytes, bytes]] = []

        async def timed_send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], message.get("headers", [])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            metrics.in_progress(route).dec()
            seconds = time.perf_counter() - started
            labels = (route, context.model, status_class(status))
            metrics.requests(*labels).inc()
            metrics.duration(*labels).observe(seconds)
            metrics.usage.record(context.tenant, status, context.tokens, context.first_token_s, time.time())
            if access_log.isEnabledFor(logging.INFO):
                _log_access(route, status, seconds, context, headers)


def _log_access(
    route: str, status: int, seconds: float, context: RequestContext, headers: list[tuple[bytes, bytes]]
) -> None:
    # The answer's own id: a replayed answer names the request that made it.
    rid = next((value.decode("latin-1") for name, value in headers if name == b"x-request-id"), context.request_id)
    fields = {"request_id": rid, "route": route, "status": status, "duration_ms": round(seconds * 1000, 2)}
    fields |= {"model": context.model, "tenant": context.tenant}
    access_log.info("%s %s %d in %.1f ms", rid, route, status, seconds * 1000, extra=fields)
