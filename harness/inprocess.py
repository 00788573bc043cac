"""A gateway in this process, over engines that are ASGI apps in this process too.

`gateway_in_process(settings, {"http://engine-a": app})` runs `create_app` with an
`AsgiUpstream` over those engines, starts its lifespan, and yields an httpx client bound to
it: no process, no port, no socket. Tests of what the gateway decides (retries, idempotency,
limits, admission, errors, metrics) use it; tests of HTTP itself and of stream timing use
real servers (harness/servers.py), because an ASGI transport reads a whole answer at once.
"""

from collections.abc import AsyncIterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.types import ASGIApp

from app.factory import create_app
from app.observability.export import SpanSink
from app.settings import GatewaySettings
from app.upstream.asgi import AsgiUpstream
from harness.counting_engine import CountingEngine

__all__ = ["InProcessGateway", "counting_engines", "gateway_in_process", "pool_settings"]


class InProcessGateway:
    """The client bound to the gateway, and the engines it reaches (remove one: it is down)."""

    def __init__(self, client: httpx.AsyncClient, engines: MutableMapping[str, ASGIApp], app: Any) -> None:
        self.client = client
        self.engines = engines
        self.app = app


def pool_settings(urls: list[str], *, pool: Mapping[str, Any] | None = None, **settings: Any) -> GatewaySettings:
    """Settings with one pool `p` over `urls` (and the pool's other fields in `pool`),
    authentication off, and `settings` on top."""
    fields: dict[str, Any] = {"auth_mode": "disabled", "pools": [{"name": "p", "replicas": urls, **(pool or {})}]}
    return GatewaySettings.model_validate(fields | settings)


def counting_engines(urls: list[str]) -> tuple[dict[str, CountingEngine], dict[str, ASGIApp]]:
    """A fresh counting engine at each of `urls`: the engines (to tell and to count), and their
    apps (for `gateway_in_process`)."""
    engines = {url: CountingEngine(name=url.rsplit("/", 1)[-1]) for url in urls}
    return engines, {url: engine.app for url, engine in engines.items()}


@asynccontextmanager
async def gateway_in_process(
    settings: GatewaySettings, engines: MutableMapping[str, ASGIApp], spans: SpanSink | None = None
) -> AsyncIterator[InProcessGateway]:
    """The gateway over `engines`, its server spans in `spans` when given (tracing on)."""
    app = create_app(settings, upstream=AsgiUpstream(engines), spans=spans)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield InProcessGateway(client, engines, app)
