"""Active health probes: `/health` for liveness and round-trip time, `/v1/models` for what a replica serves."""

import asyncio
import json
import logging
import time
from typing import Any

from app.engine_metrics import RUNNING, WAITING, read_engine_gauges
from app.pools import PoolRegistry, Replica
from app.upstream import UpstreamClient, UpstreamError

__all__ = ["HealthMonitor"]

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(self, registry: PoolRegistry, client: UpstreamClient, *, interval: float, timeout: float) -> None:
        self._registry = registry
        self._client = client
        self._interval = interval
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(r) for r in self._registry.replicas()))

    async def probe(self, replica: Replica) -> None:
        started = time.perf_counter()
        try:
            status, _ = await self._client.get(f"{replica.url}/health", within=self._timeout)
            rtt_ms = (time.perf_counter() - started) * 1000
            if status != 200:
                raise UpstreamError(f"/health answered {status}")
            models = await self._models(replica)
            await self._load(replica)
        except UpstreamError as exc:
            if replica.healthy:
                log.warning("replica %s (%s) is down: %s", replica.id, replica.url, exc)
            replica.mark_down(str(exc))
            return
        if not replica.healthy:
            log.info("replica %s (%s) is up, serving %s", replica.id, replica.url, sorted(models) or "-")
        replica.mark_up(models, rtt_ms)

    async def _models(self, replica: Replica) -> dict[str, dict[str, Any]]:
        status, body = await self._client.get(f"{replica.url}/v1/models", within=self._timeout)
        if status != 200:
            raise UpstreamError(f"/v1/models answered {status}")
        try:
            cards = json.loads(body)["data"]
            return {str(card["id"]): dict(card) for card in cards}
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"/v1/models answered an unreadable list: {exc}") from exc

    async def _load(self, replica: Replica) -> None:
        """Queue gauges from the engine's /metrics; an engine without them is still healthy."""
        status, body = await self._client.get(f"{replica.url}/metrics", within=self._timeout)
        gauges = read_engine_gauges(body.decode(errors="replace")) if status == 200 else {}
        replica.engine_running = gauges.get(RUNNING)
        replica.engine_waiting = gauges.get(WAITING)

    async def __aenter__(self) -> "HealthMonitor":
        await self.probe_all()
        self._task = asyncio.create_task(self._loop(), name="health-monitor")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe_all()
