"""The app factory: `create_app(settings)` wires the gateway's parts in its lifespan."""

import logging
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Route

from app.api import admin, oauth, openai, ops, predict
from app.api.openapi import install_openapi
from app.auth import build_auth
from app.errors import ShuttingDown, install_error_handlers
from app.observability.metrics import GatewayMetrics, RequestMetrics
from app.pipeline.gateway import Gateway
from app.pipeline.proxy import Proxy
from app.pools.embedded import EmbeddedEngine
from app.pools.health import HealthMonitor
from app.pools.membership import NodeManager
from app.pools.registry import PoolRegistry, Replica
from app.reliability.admission import Admission
from app.reliability.drain import Drain, DrainMiddleware
from app.reliability.idempotency import Idempotency
from app.reliability.idempotency_store import InProcessStore, RedisStore
from app.reliability.limits import RedisLimiter, build_limiter
from app.reliability.retry_budget import RetryBudget
from app.settings import GatewaySettings, PoolSettings
from app.upstream.client import UpstreamClient
from router import OutlierPolicy, Router

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            client = await stack.enter_async_context(
                UpstreamClient(
                    connect_timeout=settings.connect_timeout_s,
                    read_timeout=settings.read_timeout_s,
                    max_connections=settings.max_upstream_connections,
                )
            )
            pools = settings.pools
            if settings.embedded:
                engine = EmbeddedEngine(
                    model=settings.embedded_model,
                    data_dir=settings.data_dir,
                    start_timeout=settings.embedded_start_timeout_s,
                )
                stack.push_async_callback(engine.stop)
                url = await engine.start(client)
                embedded = {"name": "embedded", "region": settings.region, "replicas": [url], "api_key": engine.api_key}
                pools = [PoolSettings.model_validate(embedded)]
            registry = PoolRegistry([worker_share(pool, settings) for pool in pools], build_router(settings))
            await stack.enter_async_context(
                HealthMonitor(
                    registry,
                    client,
                    interval=settings.health_interval_s,
                    stats_interval=settings.stats_interval_s,
                    timeout=settings.health_timeout_s,
                )
            )
            budget = RetryBudget(settings.retry_budget_ratio, minimum=settings.retry_budget_min)
            admission = Admission(
                registry, max_queue=settings.worker_share(settings.max_queue), queue_timeout_s=settings.queue_timeout_s
            )

            async def wait_idle() -> None:
                while admission.queued or any(r.in_flight for r in registry.replicas()):
                    await admission.wait_empty()
                    await registry.wait_idle()

            drain.in_flight = lambda: admission.queued + sum(r.in_flight for r in registry.replicas())
            drain.wait_idle = wait_idle
            drain.on_budget_spent = lambda: admission.shed_all(ShuttingDown)
            store = (
                RedisStore(settings.redis_url)
                if settings.redis_url
                else InProcessStore(settings.idempotency_memory_bytes)
            )
            idempotency = Idempotency(
                store,
                lease_s=settings.idempotency_lease_s,
                retention_s=settings.idempotency_retention_s,
                max_answer_bytes=settings.idempotency_max_answer_bytes,
                settle_timeout_s=settings.idempotency_settle_timeout_s,
                on_replay=metrics.replays.inc,
            )
            stack.push_async_callback(idempotency.aclose)
            proxy = Proxy(client, registry.report, drain, metrics)
            limiter = build_limiter(settings)
            if isinstance(limiter, RedisLimiter):
                stack.push_async_callback(limiter.aclose)
            app.state.gateway = Gateway(settings, registry, proxy, budget, idempotency, admission, metrics, limiter)
            metrics.watch(lambda: admission.queued, lambda: breakers(registry))
            if metrics.multiprocess:
                await stack.enter_async_context(metrics.refreshing(interval=settings.stats_interval_s))
            app.state.nodes = NodeManager(registry, client, timeout=settings.health_timeout_s)
            stack.push_async_callback(app.state.nodes.aclose)
            log.info("gateway ready: %d pool(s) in region %s", len(registry.pools), settings.region)
            yield

    drain = Drain(settings.drain_timeout_s)
    metrics = GatewayMetrics()
    app = FastAPI(title="switchyard", version="0.1.0", lifespan=lifespan)
    app.state.drain = drain
    app.state.metrics = metrics
    app.state.guard, app.state.issuer = build_auth(settings)
    install_error_handlers(app)  # first: its catch-all is the innermost middleware
    app.add_middleware(DrainMiddleware, drain=drain)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: shutdown answers count too
    app.router.routes.extend(openai.completion_routes)
    app.router.routes.append(Route("/predict", predict.predict, methods=["POST"]))
    app.include_router(openai.router)
    app.include_router(ops.router)
    app.include_router(admin.router)
    app.include_router(oauth.router)
    install_openapi(app)
    return app


def worker_share(pool: PoolSettings, settings: GatewaySettings) -> PoolSettings:
    """The pool as one worker admits to it: its part of each replica's max_load."""
    if pool.max_load is None or settings.workers == 1:
        return pool
    return pool.model_copy(update={"max_load": settings.worker_share(pool.max_load)})


def breakers(registry: PoolRegistry) -> list[tuple[str, str, str]]:
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
