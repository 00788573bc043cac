"""What the gateway knows about its engine pools: replicas, their health, load and models.

The registry owns membership: replicas added or removed here (from the settings, or the
admin API at run time) join or leave the router at once.
"""

import asyncio
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from app.pools.engine_stats import EngineStats
from app.settings import PoolKind, PoolSettings
from router import Outcome, Router

__all__ = ["Lease", "Pool", "PoolRegistry", "Replica"]


@dataclass(eq=False, slots=True)
class Replica:
    """One engine server, as the router sees it (`router.Node`). Its URL is its place on the ring.

    `available` and `load` are kept as plain fields, updated by the methods that change what
    they derive from, because the router reads them for every replica on every request.
    """

    id: str
    url: str
    pool: "Pool"
    healthy: bool = False
    down_reported: bool = False  # its being down was logged (once per outage, also a first probe's)
    draining: bool = False
    available: bool = False  # healthy and not draining
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    rtt_ms: float | None = None
    in_flight: int = 0
    load: int = 0  # in flight from this gateway plus queued inside the engine
    # From the engine's /metrics (vLLM's names; ours exports the same).
    engine_running: int | None = None
    engine_waiting: int | None = None
    active_adapters: frozenset[str] = frozenset()
    idle: asyncio.Event = field(default_factory=asyncio.Event)  # set while nothing is in flight

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def name(self) -> str:
        return self.url

    @property
    def region(self) -> str:
        return self.pool.region

    @property
    def group(self) -> str:
        return self.pool.name

    @property
    def capacity(self) -> int | None:
        return self.pool.max_load

    def serves(self, model: str) -> bool:
        return model in self.models or model in self.pool.static_models

    def holds(self, adapter: str) -> bool:
        return adapter in self.active_adapters

    def mark_up(self, models: dict[str, dict[str, Any]], rtt_ms: float) -> None:
        self.healthy, self.down_reported, self.last_error, self.rtt_ms = True, False, None, rtt_ms
        if not self.pool.static_models:
            self.models = models
        self.available = not self.draining

    def mark_down(self, reason: str) -> bool:
        """True when this is news: the first word of an outage (or of a replica never up), to log."""
        news = not self.down_reported
        self.healthy, self.last_error, self.available, self.down_reported = False, reason, False, True
        return news

    def set_draining(self, draining: bool) -> None:
        self.draining = draining
        self.available = self.healthy and not draining

    def set_engine_stats(self, stats: EngineStats) -> None:
        self.engine_running, self.engine_waiting = stats.running, stats.waiting
        self.active_adapters = stats.active_adapters
        self.load = self.in_flight + (stats.waiting or 0)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "healthy": self.healthy,
            "draining": self.draining,
            "models": sorted(self.pool.static_models or self.models),
            "in_flight": self.in_flight,
            "engine_running": self.engine_running,
            "engine_waiting": self.engine_waiting,
            "active_adapters": sorted(self.active_adapters),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "last_error": self.last_error,
        }


class Lease:
    """One request's share of a replica's load, from choice to the end of its answer.

    `on_release(tenant)` is told when it ends (admission counts each tenant's requests in flight).
    """

    __slots__ = ("_on_release", "replica", "tenant")

    def __init__(self, replica: Replica, tenant: str = "", on_release: Callable[[str], None] | None = None) -> None:
        self.replica: Replica | None = replica
        self.tenant = tenant
        self._on_release = on_release
        replica.in_flight += 1
        replica.load += 1
        replica.idle.clear()

    def release(self) -> None:
        replica = self.replica
        if replica is not None:
            replica.in_flight -= 1
            replica.load -= 1
            if not replica.in_flight:
                replica.idle.set()
            self.replica = None
            if self._on_release is not None:
                self._on_release(self.tenant)


@dataclass(eq=False, slots=True)
class Pool:
    name: str
    region: str
    kind: PoolKind
    static_models: frozenset[str]
    max_load: int | None
    # Sent with every request to the pool's engines: their API key, when they have one.
    auth: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def next_id(self) -> str:
        """Replica ids are never reused, so a removed replica's id cannot name a new one."""
        return f"{self.name}-{next(self._ids)}"

    def find(self, replica_id: str) -> Replica | None:
        return next((r for r in self.replicas if r.id == replica_id), None)


class PoolRegistry:
    def __init__(self, pools: list[PoolSettings], router: Router[Replica]) -> None:
        self.router = router
        self.pools: dict[str, Pool] = {}
        self._adapters: frozenset[str] = frozenset()
        self.known_models: frozenset[str] = frozenset()  # served by some replica: a bounded metrics label
        for config in pools:
            auth = {"authorization": f"Bearer {config.api_key.get_secret_value()}"} if config.api_key else {}
            pool = Pool(config.name, config.region, config.kind, frozenset(config.models), config.max_load, auth)
            self.pools[pool.name] = pool
            for url in config.replicas:
                self.add_replica(pool, str(url))

    def add_replica(self, pool: Pool, url: str, replica_id: str | None = None) -> Replica:
        """A new member of `pool` (not yet probed, so it takes no traffic until found healthy),
        named `replica_id` (default: the pool's next number)."""
        replica = Replica(replica_id or pool.next_id(), url.rstrip("/"), pool)
        self.router.add(replica)  # refuses a URL that is already routed to
        pool.replicas.append(replica)
        return replica

    def remove_replica(self, replica: Replica) -> None:
        replica.pool.replicas.remove(replica)
        self.router.remove(replica.name)

    def capacity(self, model: str) -> int | None:
        """Requests the available replicas serving `model` take before saturating (None: no limit)."""
        total = 0
        for replica in self.replicas():
            if replica.available and replica.serves(model):
                if replica.capacity is None:
                    return None
                total += replica.capacity
        return total

    def report(self, replica: Replica, outcome: Outcome) -> None:
        """How a request to `replica` went, for the router's outlier detection."""
        self.router.record(replica.name, outcome, time.monotonic())

    def find_url(self, url: str) -> Replica | None:
        url = url.rstrip("/")
        return next((r for r in self.replicas() if r.url == url), None)

    def replicas(self) -> Iterator[Replica]:
        return itertools.chain.from_iterable(p.replicas for p in self.pools.values())

    async def wait_idle(self) -> None:
        """Returns once no replica has a request in flight."""
        while busy := next((r for r in self.replicas() if r.in_flight), None):
            await busy.idle.wait()

    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas())

    def is_adapter(self, model: str) -> bool:
        """A model that an engine lists with a `parent`: a LoRA adapter on that base model."""
        return model in self._adapters

    def refresh_models(self) -> None:
        """Re-read which models are adapters, after probes changed what replicas list."""
        self._adapters = frozenset(
            model for r in self.replicas() if r.healthy for model, card in r.models.items() if card.get("parent")
        )
        self.known_models = frozenset(m for r in self.replicas() for m in (*r.models, *r.pool.static_models))

    def model_cards(self, *, every_replica: bool = False) -> list[dict[str, Any]]:
        """The union of the models that healthy replicas (or all: `every_replica`) serve, one card per id."""
        cards: dict[str, dict[str, Any]] = {}
        for replica in self.replicas():
            if not (replica.healthy or every_replica):
                continue
            for model in replica.pool.static_models:
                cards.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": "switchyard"})
            for model, card in replica.models.items():
                cards.setdefault(model, card)
        return [cards[k] for k in sorted(cards)]

    def describe(self, now: float) -> list[dict[str, Any]]:
        return [self.describe_pool(pool, now) for pool in self.pools.values()]

    def describe_pool(self, pool: Pool, now: float) -> dict[str, Any]:
        return {
            "name": pool.name,
            "region": pool.region,
            "kind": pool.kind,
            "max_load": pool.max_load,
            "healthy_replicas": sum(r.healthy for r in pool.replicas),
            "replicas": [self.describe_replica(r, now) for r in pool.replicas],
        }

    def describe_replica(self, replica: Replica, now: float) -> dict[str, Any]:
        outliers = self.router.outliers
        until = outliers.ejected_until(replica.name)
        return replica.describe() | {
            "breaker": outliers.state(replica.name, now).value,
            "ejected_for_s": None if until is None or until <= now else round(until - now, 1),
            "times_ejected": outliers.times_ejected(replica.name),
        }
