"""What the gateway knows about its engine pools: replicas, their health and their models."""

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from app.settings import PoolKind, PoolSettings

__all__ = ["Pool", "PoolRegistry", "Replica"]


@dataclass(eq=False, slots=True)
class Replica:
    """One engine server. Health comes from probes and from failed proxy attempts."""

    id: str
    url: str
    pool: "Pool"
    healthy: bool = False
    probed: bool = False
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_error: str | None = None
    rtt_ms: float | None = None
    in_flight: int = 0
    # Gauges scraped from the engine's /metrics (vLLM's names; ours exports the same).
    engine_running: int | None = None
    engine_waiting: int | None = None

    @property
    def load(self) -> int:
        """Requests this gateway has in flight there, plus those queued inside the engine."""
        return self.in_flight + (self.engine_waiting or 0)

    @contextmanager
    def track(self) -> Iterator[None]:
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def mark_up(self, models: dict[str, dict[str, Any]], rtt_ms: float) -> None:
        self.healthy, self.probed, self.last_error, self.rtt_ms = True, True, None, rtt_ms
        if not self.pool.static_models:
            self.models = models

    def mark_down(self, reason: str) -> None:
        self.healthy, self.last_error = False, reason

    def serves(self, model: str) -> bool:
        return model in self.pool.static_models or model in self.models

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "healthy": self.healthy,
            "models": sorted(self.pool.static_models or self.models),
            "in_flight": self.in_flight,
            "engine_running": self.engine_running,
            "engine_waiting": self.engine_waiting,
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "last_error": self.last_error,
        }


@dataclass(eq=False, slots=True)
class Pool:
    name: str
    region: str
    kind: PoolKind
    static_models: frozenset[str]
    replicas: list[Replica] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "region": self.region,
            "kind": self.kind,
            "healthy_replicas": sum(r.healthy for r in self.replicas),
            "replicas": [r.describe() for r in self.replicas],
        }


class PoolRegistry:
    def __init__(self, pools: list[PoolSettings]) -> None:
        self._turns = itertools.count()
        self.pools: list[Pool] = []
        for config in pools:
            pool = Pool(config.name, config.region, config.kind, frozenset(config.models))
            pool.replicas = [
                Replica(f"{config.name}-{i}", str(url).rstrip("/"), pool) for i, url in enumerate(config.replicas)
            ]
            self.pools.append(pool)

    def replicas(self) -> Iterator[Replica]:
        return itertools.chain.from_iterable(p.replicas for p in self.pools)

    def next_turn(self) -> int:
        """A counter that breaks ties between equally good replicas in turn."""
        return next(self._turns)

    def any_healthy(self) -> bool:
        return any(r.healthy for r in self.replicas())

    def model_cards(self) -> list[dict[str, Any]]:
        """The union of the models that healthy replicas serve, one card per id."""
        cards: dict[str, dict[str, Any]] = {}
        for replica in self.replicas():
            if not replica.healthy:
                continue
            for model in replica.pool.static_models:
                cards.setdefault(model, {"id": model, "object": "model", "created": 0, "owned_by": "switchyard"})
            for model, card in replica.models.items():
                cards.setdefault(model, card)
        return [cards[k] for k in sorted(cards)]

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.pools]
