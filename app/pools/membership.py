"""Node management: replicas added after a connectivity and model check, drained, removed.

Changes take effect at once (the registry updates the router) and last until the gateway
restarts; the settings file stays the source of truth for a restart.
"""

import asyncio
import logging
import time
from typing import Any

from app.errors import Conflict, NotFound, Unprocessable
from app.pools.health import check_replica
from app.pools.registry import Pool, PoolRegistry, Replica
from app.upstream.client import Upstream, UpstreamError

__all__ = ["NodeManager"]

log = logging.getLogger(__name__)


class NodeManager:
    def __init__(self, registry: PoolRegistry, client: Upstream, *, timeout: float) -> None:
        self._registry = registry
        self._client = client
        self._timeout = timeout
        self._removals: dict[Replica, asyncio.Task[None]] = {}
        # URLs an operator removed: discovery leaves them out until they leave DNS.
        self.removed_by_operator: set[str] = set()

    def pool(self, name: str) -> Pool:
        pool = self._registry.pools.get(name)
        if pool is None:
            raise NotFound(f"There is no pool `{name}`.", param="pool")
        return pool

    def replica(self, pool_name: str, replica_id: str) -> Replica:
        replica = self.pool(pool_name).find(replica_id)
        if replica is None:
            raise NotFound(f"Pool `{pool_name}` has no replica `{replica_id}`.", param="replica")
        return replica

    async def add(self, pool_name: str, url: str, replica_id: str | None = None) -> Replica:
        """A replica that answers and serves what the pool serves joins it, healthy, at once."""
        pool = self.pool(pool_name)
        url = url.rstrip("/")
        existing = self._registry.find_url(url)
        if existing is not None:
            raise Conflict(f"{url} is already replica `{existing.id}` of pool `{existing.pool.name}`.", param="url")
        try:
            rtt_ms, models = await check_replica(self._client, url, self._timeout, pool.auth)
        except UpstreamError as exc:
            raise Unprocessable(f"{url} did not pass the health check: {exc}", code="replica_unreachable") from exc
        missing = sorted(self._required_models(pool) - set(models))
        if missing:
            raise Unprocessable(
                f"{url} does not serve {', '.join(missing)}, which pool `{pool.name}` serves "
                f"(it serves {', '.join(sorted(models)) or 'nothing'}).",
                code="model_mismatch",
            )
        if not models and not pool.static_models:
            raise Unprocessable(f"{url} serves no model.", code="model_mismatch")
        if self._registry.find_url(url) is not None:  # added by a concurrent call during the check
            raise Conflict(f"{url} was added meanwhile.", param="url")
        replica = self._registry.add_replica(pool, url, replica_id)
        self.removed_by_operator.discard(url)
        replica.mark_up(models, rtt_ms)
        self._registry.refresh_models()
        self._registry.router.probe(replica.name, True, time.monotonic(), rtt_ms)
        log.info("replica %s (%s) added to pool %s", replica.id, url, pool.name)
        return replica

    def drain(self, replica: Replica) -> None:
        """No new requests; those in flight, streams included, run to their end."""
        replica.set_draining(True)
        log.info("replica %s draining, %d in flight", replica.id, replica.in_flight)

    def undrain(self, replica: Replica) -> None:
        if replica in self._removals:
            raise Conflict(f"Replica `{replica.id}` is being removed.", param="replica")
        replica.set_draining(False)

    def removing(self, replica: Replica) -> bool:
        return replica in self._removals

    def remove(self, replica: Replica, *, by_operator: bool = True) -> bool:
        """Drain, then remove once nothing is in flight; True when it is gone already. One an
        operator removed is not added back by discovery while DNS still lists it."""
        if by_operator:
            self.removed_by_operator.add(replica.url)
        self.drain(replica)
        if replica.in_flight == 0:
            self._forget(replica)
            return True
        if replica not in self._removals:
            self._removals[replica] = asyncio.create_task(self._remove_when_idle(replica), name=f"remove-{replica.id}")
        return False

    async def aclose(self) -> None:
        for task in self._removals.values():
            task.cancel()
        await asyncio.gather(*self._removals.values(), return_exceptions=True)

    def describe(self, replica: Replica) -> dict[str, Any]:
        return self._registry.describe_replica(replica, time.monotonic()) | {"removing": replica in self._removals}

    async def _remove_when_idle(self, replica: Replica) -> None:
        try:
            await replica.idle.wait()
            self._forget(replica)
        finally:
            self._removals.pop(replica, None)

    def _forget(self, replica: Replica) -> None:
        if replica in replica.pool.replicas:
            self._registry.remove_replica(replica)
            log.info("replica %s (%s) removed from pool %s", replica.id, replica.url, replica.pool.name)

    def _required_models(self, pool: Pool) -> set[str]:
        """The pool's declared models, else the base models its healthy replicas serve."""
        if pool.static_models:
            return set(pool.static_models)
        return {
            model
            for replica in pool.replicas
            if replica.healthy
            for model, card in replica.models.items()
            if not card.get("parent")  # adapters come and go per replica
        }
