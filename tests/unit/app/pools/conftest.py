"""Gateways in process over several pools.

`regions`: three regions of counting engines behind one gateway in region `eu`. eu has two
replicas (saturated at load 2 each), us one (10 ms away), ap one (50 ms away); probes every
0.3 s, and one failure ejects a replica for a second.

`two_pools`: two pools in two regions, each serving its own model.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from app.settings import GatewaySettings
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process

EJECTION_S = 1.0
URLS = {replica: f"http://{replica}" for replica in ("eu-0", "eu-1", "us-0", "ap-0")}


class Regions:
    """The gateway, and its engines by replica id (`stop` takes one down, `start` brings it back)."""

    def __init__(self, gateway: InProcessGateway, engines: dict[str, CountingEngine]) -> None:
        self.gateway = gateway
        self.engines = engines

    def stop(self, replica_id: str) -> None:
        del self.gateway.engines[URLS[replica_id]]

    def start(self, replica_id: str) -> None:
        self.gateway.engines[URLS[replica_id]] = self.engines[replica_id].app

    async def chat(self, session: str, **headers: str) -> httpx.Response:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return await self.gateway.client.post(
            "/v1/chat/completions", json=body, headers={"x-session-id": session, **headers}
        )

    async def route(self, session: str) -> tuple[str, str]:
        """Where a chat of `session` was served (it must be answered)."""
        return route_of(await self.chat(session))

    async def replicas(self) -> dict[str, dict[str, Any]]:
        pools = (await self.gateway.client.get("/admin/pools")).json()["pools"]
        return {replica["id"]: replica for pool in pools for replica in pool["replicas"]}

    async def all_back(self) -> bool:
        return all(r["healthy"] and r["breaker"] == "closed" for r in (await self.replicas()).values())

    async def session_on(self, replica_id: str) -> str:
        """A session id whose home is `replica_id`."""
        for i in range(200):
            if (await self.route(f"probe-{i}"))[1] == replica_id:
                return f"probe-{i}"
        raise AssertionError(f"no session lands on {replica_id}")


def route_of(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-route-region"], response.headers["x-route-replica"]


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], limit_s: float = 20.0) -> None:
    """Until `condition()` (or what it awaits) is true."""
    deadline = time.monotonic() + limit_s
    while True:
        met = condition()
        if not isinstance(met, bool):
            met = await met
        if met:
            return
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def regions_settings(**values: Any) -> GatewaySettings:
    pools = [
        {"name": "eu", "region": "eu", "replicas": [URLS["eu-0"], URLS["eu-1"]], "max_load": 2},
        {"name": "us", "region": "us", "replicas": [URLS["us-0"]]},
        {"name": "ap", "region": "ap", "replicas": [URLS["ap-0"]]},
    ]
    fields = {
        "auth_mode": "disabled",
        "pools": pools,
        "region": "eu",
        "region_latencies_ms": {"us": 10.0, "ap": 50.0},
        "health_interval_s": 0.3,
        "stats_interval_s": 0.3,
        "eject_after_failures": 1,
        "eject_base_s": EJECTION_S,
    }
    return GatewaySettings.model_validate(fields | values)


@pytest.fixture
async def regions() -> AsyncIterator[Regions]:
    engines = {replica: CountingEngine(name=replica) for replica in URLS}
    apps: dict[str, ASGIApp] = {URLS[replica]: engine.app for replica, engine in engines.items()}
    async with gateway_in_process(regions_settings(), apps) as gateway:
        yield Regions(gateway, engines)


FIRST, SECOND = "first-model", "second-model"
NORTH, SOUTH = "http://north", "http://south"


@pytest.fixture
async def two_pools() -> AsyncIterator[InProcessGateway]:
    """Two pools in two regions, each serving its own model (our engine server, over fake
    engines), behind a gateway in `north` that probes them every 0.2 s."""
    pools = [
        {"name": "north", "region": "north", "replicas": [NORTH]},
        {"name": "south", "region": "south", "replicas": [SOUTH]},
    ]
    settings = GatewaySettings.model_validate(
        {"auth_mode": "disabled", "pools": pools, "region": "north", "health_interval_s": 0.2}
    )
    apps: dict[str, ASGIApp] = {
        NORTH: create_engine_app(FakeEngine(model_name=FIRST)),
        SOUTH: create_engine_app(FakeEngine(model_name=SECOND)),
    }
    async with gateway_in_process(settings, apps) as gateway:
        yield gateway
