"""Replicas found in DNS: a pool's `discover` name (a Kubernetes headless Service) resolved
again every few seconds, so scaling an engine Deployment changes the pool with no restart.

Each A and AAAA record is a replica at `scheme://address:port`. One that joins is probed first
(the node manager's health and model check) and takes traffic once it passes; one that leaves
is drained: requests in flight run to their end, then it is removed. A name that does not exist
or has no records (every pod unready) means no replicas; a resolver that fails (a timeout, no
server answering) changes nothing, so a DNS blip never empties a pool. Replicas from the
settings' `replicas` are never touched.
"""

import asyncio
import contextlib
import hashlib
import logging
from types import TracebackType

from app.errors import Conflict, Unprocessable
from app.pools.membership import NodeManager
from app.pools.registry import Pool, PoolRegistry
from app.settings import DiscoverySettings, PoolSettings
from protocol.dns import ResolveFailed, addresses, resolver, url_of

__all__ = ["Discoveries", "PoolDiscovery"]

log = logging.getLogger(__name__)


class PoolDiscovery:
    """One pool's DNS name, resolved and applied to the pool: `refresh` once, `run` forever."""

    def __init__(self, pool: Pool, settings: DiscoverySettings, registry: PoolRegistry, nodes: NodeManager) -> None:
        self.pool, self.settings = pool, settings
        self._registry, self._nodes = registry, nodes
        self._found: set[str] = set()  # the URLs this discovery added
        self._listed: set[str] = set()  # the URLs DNS gave last round
        self._joining: dict[str, asyncio.Task[None]] = {}  # URL -> its probe, in the background
        self._failing = False  # a failure was logged (once per outage)
        self._refused: dict[str, str] = {}  # a URL that did not pass its check -> why (logged once)
        self._resolver = resolver(settings.nameservers, min(5.0, max(1.0, settings.interval_s)))

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug: logged, and the next round tries again
                log.exception("pool %s: discovery through %s failed", self.pool.name, self.settings.dns)
            await asyncio.sleep(self.settings.interval_s)

    async def refresh(self, *, wait: bool = False) -> None:
        """Resolve once: replicas that left are drained at once, those that joined probed in
        the background (awaited when `wait`), so a slow probe never holds up a departure."""
        try:
            found = await addresses(self._resolver, self.settings.dns, search=not self.settings.nameservers)
        except ResolveFailed as error:
            if not self._failing:
                log.warning(
                    "pool %s: could not resolve %s (its replicas stay): %s", self.pool.name, self.settings.dns, error
                )
            self._failing = True
            return
        if self._failing:
            log.info("pool %s: %s resolves again", self.pool.name, self.settings.dns)
        self._failing = False
        urls = {url_of(self.settings.scheme, address, self.settings.port) for address in found}
        for url in sorted(self._found - urls):
            replica = self._registry.find_url(url)
            if replica is not None and replica.pool is self.pool and not self._nodes.removing(replica):
                log.info("pool %s: %s left %s: draining it", self.pool.name, url, self.settings.dns)
                self._nodes.remove(replica, by_operator=False)
        self._found &= urls
        self._nodes.removed_by_operator -= self._listed - urls  # an operator's removal holds while DNS lists it
        self._listed = urls
        present = {replica.url for replica in self.pool.replicas}
        for url in sorted(urls - present - self._nodes.removed_by_operator - set(self._joining)):
            self._joining[url] = asyncio.create_task(self._join(url), name=f"join-{url}")
        for url in set(self._refused) - urls:
            del self._refused[url]
        if wait and self._joining:
            await asyncio.gather(*self._joining.values(), return_exceptions=True)

    def close(self) -> None:
        for task in self._joining.values():
            task.cancel()

    async def _join(self, url: str) -> None:
        """Probe `url` and add it (healthy) when it passes; tried again next round when not."""
        try:
            replica_id = f"{self.pool.name}-{hashlib.blake2b(url.encode(), digest_size=5).hexdigest()}"
            await self._nodes.add(self.pool.name, url, replica_id)
        except (Unprocessable, Conflict) as error:
            if self._refused.get(url) != str(error):
                log.warning("pool %s: %s from %s not added yet: %s", self.pool.name, url, self.settings.dns, error)
            self._refused[url] = str(error)
            return
        finally:
            self._joining.pop(url, None)
        self._refused.pop(url, None)
        self._found.add(url)
        log.info("pool %s: %s joined from %s", self.pool.name, url, self.settings.dns)


class Discoveries:
    """Every discovering pool's loop, started and stopped with the gateway."""

    def __init__(self, discoveries: list[PoolDiscovery]) -> None:
        self.discoveries = discoveries
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def of(cls, pools: list[PoolSettings], registry: PoolRegistry, nodes: NodeManager) -> "Discoveries":
        return cls(
            [
                PoolDiscovery(registry.pools[config.name], config.discover, registry, nodes)
                for config in pools
                if config.discover is not None and config.name in registry.pools
            ]
        )

    FIRST_ROUND_S = 10.0  # how long the start waits for each pool's first replicas

    async def __aenter__(self) -> "Discoveries":
        # A first round before the gateway says it is ready: a pool found only in DNS is not empty then.
        first = asyncio.gather(*(discovery.refresh(wait=True) for discovery in self.discoveries))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(first, self.FIRST_ROUND_S)
        self._tasks = [
            asyncio.create_task(discovery.run(), name=f"discover-{discovery.pool.name}")
            for discovery in self.discoveries
        ]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for task in self._tasks:
            task.cancel()
        for discovery in self.discoveries:
            discovery.close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
