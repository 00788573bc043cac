"""Live state of every replica: active health probes and load scrapes, each on its own period.

`/health` (whose round trip is the RTT sample for region order) and `/v1/models` every
`health_interval`; `/metrics` (queue depth, running count, adapters in use) every
`stats_interval`, since bounded loads need fresh engine queues.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from app.pools.engine_stats import EngineStats, read_engine_stats
from app.pools.registry import PoolRegistry, Replica
from app.upstream.client import Upstream, UpstreamError

__all__ = ["HealthMonitor", "check_replica"]

log = logging.getLogger(__name__)


async def check_replica(
    client: Upstream, url: str, within: float, auth: Mapping[str, str]
) -> tuple[float, dict[str, dict[str, Any]]]:
    """`/health` answers 200 and `/v1/models` a readable list: the round trip in ms, and the models.

    `auth`: the pool's API key header (`/health` is open on every engine, `/v1/models` is not)."""
    started = time.perf_counter()
    status, _ = await client.get(f"{url}/health", within=within)
    rtt_ms = (time.perf_counter() - started) * 1000
    if status != 200:
        raise UpstreamError(f"/health answered {status}")
    status, body = await client.get(f"{url}/v1/models", within=within, headers=auth)
    if status in (401, 403):
        raise UpstreamError(f"/v1/models answered {status}: the engine refused the pool's api_key")
    if status != 200:
        raise UpstreamError(f"/v1/models answered {status}")
    try:
        cards = json.loads(body)["data"]
        return rtt_ms, {str(card["id"]): dict(card) for card in cards}
    except (ValueError, KeyError, TypeError) as exc:
        raise UpstreamError(f"/v1/models answered an unreadable list: {exc}") from exc


class HealthMonitor:
    def __init__(
        self,
        registry: PoolRegistry,
        client: Upstream,
        *,
        interval: float,
        stats_interval: float,
        timeout: float,
    ) -> None:
        self._registry = registry
        self._client = client
        self._interval = interval
        self._stats_interval = stats_interval
        self._timeout = timeout
        self._tasks: list[asyncio.Task[None]] = []

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(r) for r in list(self._registry.replicas())))
        self._registry.refresh_models()

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(r) for r in list(self._registry.replicas()) if r.healthy))

    async def probe(self, replica: Replica) -> None:
        try:
            rtt_ms, models = await check_replica(self._client, replica.url, self._timeout, replica.pool.auth)
        except UpstreamError as exc:
            if replica.mark_down(str(exc)):
                log.warning("replica %s (%s) of pool %s is down: %s", replica.id, replica.url, replica.pool.name, exc)
            self._registry.router.probe(replica.name, False, time.monotonic())
            return
        if not replica.healthy:
            log.info("replica %s (%s) is up, serving %s", replica.id, replica.url, sorted(models) or "-")
        replica.mark_up(models, rtt_ms)
        self._registry.router.probe(replica.name, True, time.monotonic(), rtt_ms)

    async def scrape(self, replica: Replica) -> None:
        """Load from the engine's /metrics; an engine without them is still healthy."""
        try:
            status, body = await self._client.get(
                f"{replica.url}/metrics", within=self._timeout, headers=replica.pool.auth
            )
        except UpstreamError:
            return  # the health probe decides whether it is down
        replica.set_engine_stats(read_engine_stats(body.decode(errors="replace")) if status == 200 else EngineStats())

    async def __aenter__(self) -> "HealthMonitor":
        await self.probe_all()
        await self.scrape_all()
        self._tasks = [
            asyncio.create_task(self._every(self._interval, self.probe_all), name="health-probes"),
            asyncio.create_task(self._every(self._stats_interval, self.scrape_all), name="load-scrapes"),
        ]
        return self

    async def __aexit__(self, *_: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @staticmethod
    async def _every(period: float, action: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await action()
            except Exception:  # a bug in one round must not stop the probes for good
                log.exception("replica probe round failed")
