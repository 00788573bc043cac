"""The app factory: `create_app(settings)` wires the gateway's parts in its lifespan."""

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from app.embedded import EmbeddedEngine
from app.errors import install_error_handlers
from app.gateway import Gateway
from app.health import HealthMonitor
from app.pools import PoolRegistry
from app.proxy import Proxy
from app.routes import openai, ops
from app.settings import GatewaySettings, PoolSettings
from app.upstream import UpstreamClient

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
                pools = [
                    PoolSettings.model_validate({"name": "embedded", "region": settings.region, "replicas": [url]})
                ]
            registry = PoolRegistry(pools)
            await stack.enter_async_context(
                HealthMonitor(registry, client, interval=settings.health_interval_s, timeout=settings.health_timeout_s)
            )
            app.state.gateway = Gateway(settings, registry, Proxy(client))
            log.info("gateway ready: %d pool(s) in region %s", len(registry.pools), settings.region)
            yield

    app = FastAPI(title="switchyard", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ops.router)
    return app
