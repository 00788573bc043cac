"""The app factory: `create_app(settings)` builds the gateway's parts, complete, and strings the
request pipeline; its lifespan only starts and stops what runs (the engine client, the embedded
engine, health probes, background renewals)."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial

from fastapi import FastAPI
from starlette.routing import Route

from app.api import admin, console, files, fine_tuning, models, oauth, ops, predict, sync_relay
from app.api.completions import completion_routes
from app.api.console import ConsoleSite
from app.api.deps import EdgeSettings, Gateway
from app.api.direct import GatewayApp, Middleware
from app.api.openapi import install_openapi
from app.api.sync_relay import SyncRelay
from app.auth import build_auth
from app.auth.keys import mint
from app.errors import CATCH_ALL, install_error_handlers
from app.finetuning import EmbeddedWorker, FineTuning
from app.observability.export import OtlpExporter, SpanSink
from app.observability.metrics import GatewayMetrics, RequestMetrics
from app.observability.tracing import TraceRequests
from app.observability.usage import LocalUsage, RedisUsage, UsageReports
from app.pipeline.attempt import Attempt
from app.pipeline.call import Handler
from app.pipeline.layers import Admitted, Idempotent, Limited
from app.pipeline.proxy import Proxy
from app.pipeline.retries import Retrying, RetryPolicy
from app.pools.discovery import Discoveries
from app.pools.embedded import EmbeddedEngine
from app.pools.health import HealthMonitor
from app.pools.membership import NodeManager
from app.pools.registry import PoolRegistry, Replica
from app.reliability.admission import Admission
from app.reliability.drain import Drain, DrainMiddleware
from app.reliability.idempotency import Idempotency
from app.reliability.idempotency_store import InProcessStore, RedisStore
from app.reliability.limits import InProcessLimiter, RedisLimiter, build_limiter
from app.reliability.retry_budget import RetryBudget
from app.settings import GatewaySettings, PoolSettings
from app.upstream.client import Upstream
from app.upstream.http import HttpUpstream
from protocol.asgi import NO_FRAMEWORK_TELEMETRY
from router import OutlierPolicy, Router

__all__ = ["build_router", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Parts:
    """What the routes, the pipeline and the lifespan share: one of each per app."""

    upstream: Upstream
    embedded: EmbeddedEngine | None
    registry: PoolRegistry
    admission: Admission
    drain: Drain
    metrics: GatewayMetrics
    idempotency: Idempotency
    limiter: InProcessLimiter | RedisLimiter | None
    health: HealthMonitor
    nodes: NodeManager
    discoveries: Discoveries  # the pools whose replicas come from DNS
    finetuning: FineTuning
    usage: LocalUsage | RedisUsage
    spans: SpanSink | None  # where recorded server spans go; None: tracing is off


def create_app(settings: GatewaySettings, upstream: Upstream | None = None, spans: SpanSink | None = None) -> FastAPI:
    """The gateway. `upstream`: how it reaches engines (HTTP unless given; tests pass an
    `AsgiUpstream` over in-process engines). `spans`: where its server spans go (an OTLP
    exporter when `otlp_endpoint` is set, unless given; tests pass memory)."""
    parts = _parts(settings, upstream or HttpUpstream.of(settings), spans)
    completions, predicted = _pipelines(parts, settings)
    # Outermost first: the request metrics begin the request's context, which the server span
    # fills in; the span covers everything after to a stream's last byte; shutdown answers and
    # the catch-all's 500s are counted and traced.
    middleware: list[Middleware] = [(RequestMetrics, {"metrics": parts.metrics})]
    if parts.spans is not None:
        middleware.append((TraceRequests, {"spans": parts.spans, "ratio": settings.otlp_sample_ratio}))
    middleware += [(DrainMiddleware, {"drain": parts.drain}), CATCH_ALL]
    app = GatewayApp(
        direct=[*completion_routes, Route("/predict", predict.predict, methods=["POST"])],
        middleware=middleware,
        title="switchyard",
        version="0.1.0",
        lifespan=partial(_lifespan, parts, settings),
        telemetry=NO_FRAMEWORK_TELEMETRY,
    )
    guard, issuer = build_auth(settings)
    app.state.gateway = Gateway(
        EdgeSettings.of(settings),
        completions,
        predicted,
        parts.registry,
        parts.nodes,
        parts.metrics,
        guard,
        issuer,
        parts.finetuning,
        UsageReports(parts.usage),
    )
    app.state.drain = parts.drain
    app.state.console = ConsoleSite.of(settings)
    app.state.sync_relay = SyncRelay(str(settings.sync_url) if settings.sync_url else None)
    install_error_handlers(app)
    routers = (models.router, files.router, fine_tuning.router, ops.router, admin.router, oauth.router)
    for router in (*routers, console.router, sync_relay.router):
        app.include_router(router)
    install_openapi(app)
    return app


def _parts(settings: GatewaySettings, upstream: Upstream, spans: SpanSink | None) -> _Parts:
    embedded = _embedded_engine(settings)
    pools = [_worker_share(pool, settings) for pool in settings.pools]
    if embedded is not None:
        pools = [_embedded_pool(embedded, settings)]
    registry = PoolRegistry(pools, build_router(settings))
    admission = Admission(
        registry, max_queue=settings.worker_share(settings.max_queue), queue_timeout_s=settings.queue_timeout_s
    )
    metrics = GatewayMetrics(queued=lambda: admission.queued, breakers=lambda: _breakers(registry))
    store = RedisStore(settings.redis_url) if settings.redis_url else InProcessStore(settings.idempotency_memory_bytes)
    idempotency = Idempotency(
        store,
        lease_s=settings.idempotency_lease_s,
        retention_s=settings.idempotency_retention_s,
        max_answer_bytes=settings.idempotency_max_answer_bytes,
        settle_timeout_s=settings.idempotency_settle_timeout_s,
        on_replay=metrics.replays.inc,
    )
    health = HealthMonitor(
        registry,
        upstream,
        interval=settings.health_interval_s,
        stats_interval=settings.stats_interval_s,
        timeout=settings.health_timeout_s,
    )
    nodes = NodeManager(registry, upstream, timeout=settings.health_timeout_s)
    drain = Drain(settings.drain_timeout_s, admission)
    limiter = build_limiter(settings)
    finetuning = FineTuning.of(settings)
    if spans is None and settings.otlp_endpoint:
        counted = metrics.trace_spans
        spans = OtlpExporter.from_environment(
            settings.otlp_endpoint, "switchyard-gateway", lambda outcome, n: counted(outcome).inc(n)
        )
    discoveries = Discoveries.of(pools, registry, nodes)
    return _Parts(
        upstream,
        embedded,
        registry,
        admission,
        drain,
        metrics,
        idempotency,
        limiter,
        health,
        nodes,
        discoveries,
        finetuning,
        RedisUsage(metrics.usage, settings.redis_url) if settings.redis_url else LocalUsage(metrics.usage),
        spans,
    )


def _pipelines(parts: _Parts, settings: GatewaySettings) -> tuple[Handler, Handler]:
    """The request pipeline of the completion routes, and of `/predict`, outermost first:
    idempotency → limits → admission → retries → attempt → proxy (docs/architecture.md)."""
    registry, metrics = parts.registry, parts.metrics
    proxy = Proxy(parts.upstream, registry.report, parts.drain, metrics, attempt_timeout_s=settings.attempt_timeout_s)
    retry = RetryPolicy(settings.max_attempts, settings.retry_backoff_s, settings.retry_backoff_max_s)
    budget = RetryBudget(settings.retry_budget_ratio, minimum=settings.retry_budget_min)
    forward = Retrying(retry, budget, parts.admission, registry, metrics, Attempt(registry, metrics, proxy))
    admitted: Handler = Admitted(parts.admission, registry, metrics, forward)
    limited = admitted if parts.limiter is None else Limited(parts.limiter, metrics, admitted)
    idempotency = parts.idempotency
    return Idempotent(idempotency, limited), Idempotent(idempotency, predict.PredictAnswer(limited))


@asynccontextmanager
async def _lifespan(parts: _Parts, settings: GatewaySettings, app: FastAPI) -> AsyncIterator[None]:
    """Starts what runs, in order, and stops it in reverse."""
    async with AsyncExitStack() as stack:
        if (issuer := app.state.gateway.issuer) is not None:
            stack.push_async_callback(issuer.aclose)
        stack.push_async_callback(app.state.sync_relay.aclose)
        if parts.spans is not None:
            stack.push_async_callback(asyncio.to_thread, parts.spans.close)  # last: the final requests' spans too
        await stack.enter_async_context(parts.upstream)
        if parts.embedded is not None:
            stack.push_async_callback(parts.embedded.stop)
            await parts.embedded.start(parts.upstream)
            if settings.embedded_finetune_worker:
                await stack.enter_async_context(_embedded_worker(settings, parts.embedded))
        await stack.enter_async_context(parts.health)
        stack.push_async_callback(parts.idempotency.aclose)
        if isinstance(parts.limiter, RedisLimiter):
            stack.push_async_callback(parts.limiter.aclose)
        if parts.metrics.multiprocess:
            await stack.enter_async_context(parts.metrics.refreshing(interval=settings.stats_interval_s))
        stack.push_async_callback(parts.nodes.aclose)
        await stack.enter_async_context(parts.discoveries)
        await stack.enter_async_context(parts.finetuning)
        await stack.enter_async_context(parts.usage)
        log.info("gateway ready: %d pool(s) in region %s", len(parts.registry.pools), settings.region)
        yield


def _embedded_worker(settings: GatewaySettings, engine: EmbeddedEngine) -> EmbeddedWorker:
    """The fine-tuning worker beside the embedded engine, with a token of this gateway's issuer
    when auth is built in: it asks which models are served, every tenant's (scope `admin`)."""
    token = None
    if settings.auth_mode == "builtin":
        token = partial(_worker_token, settings)
    return EmbeddedWorker(settings, engine.url, engine.api_key, token)


def _worker_token(settings: GatewaySettings, ttl_s: int) -> str:
    return mint(settings, subject="finetune-worker", scopes=["chat", "admin"], ttl_s=ttl_s)


def _embedded_engine(settings: GatewaySettings) -> EmbeddedEngine | None:
    """The local engine of the embedded default: when no pool is configured."""
    if not settings.embedded:
        return None
    return EmbeddedEngine(
        model=settings.embedded_model, data_dir=settings.data_dir, start_timeout=settings.embedded_start_timeout_s
    )


def _embedded_pool(engine: EmbeddedEngine, settings: GatewaySettings) -> PoolSettings:
    pool = {"name": "embedded", "region": settings.region, "replicas": [engine.url], "api_key": engine.api_key}
    return PoolSettings.model_validate(pool)


def _worker_share(pool: PoolSettings, settings: GatewaySettings) -> PoolSettings:
    """The pool as one worker admits to it: its part of each replica's max_load."""
    if pool.max_load is None or settings.workers == 1:
        return pool
    return pool.model_copy(update={"max_load": settings.worker_share(pool.max_load)})


def _breakers(registry: PoolRegistry) -> list[tuple[str, str, str]]:
    """(pool, replica id, breaker state) of every replica, for the metrics."""
    now = time.monotonic()
    return [(pool["name"], r["id"], r["breaker"]) for pool in registry.describe(now) for r in pool["replicas"]]


def build_router(settings: GatewaySettings) -> Router[Replica]:
    return Router(
        settings.region,
        load_factor=settings.load_factor,
        vnodes=settings.ring_vnodes,
        latencies_ms=settings.region_latencies_ms,
        memory=settings.route_memory,
        outliers=OutlierPolicy(
            consecutive_failures=settings.eject_after_failures,
            base_ejection_s=settings.eject_base_s,
            max_ejection_s=settings.eject_max_s,
            max_ejected_fraction=settings.max_ejected_fraction,
        ),
    )
