"""A fake replica for router tests: plain fields where the gateway has live stats."""

from collections.abc import Collection
from dataclasses import dataclass, field

from router import Decision, Router

__all__ = ["FakeNode", "decide", "fake_nodes"]


@dataclass(eq=False)
class FakeNode:
    name: str
    region: str = "eu"
    group: str = "pool"
    load: int = 0
    capacity: int | None = None
    available: bool = True
    models: frozenset[str] = frozenset({"m"})
    adapters: frozenset[str] = field(default_factory=frozenset)

    def serves(self, model: str) -> bool:
        return model in self.models

    def holds(self, adapter: str) -> bool:
        return adapter in self.adapters


def fake_nodes(count: int, region: str = "eu", *, capacity: int | None = None) -> list[FakeNode]:
    return [
        FakeNode(f"http://{region}-{i}.internal:8000", region, f"{region}-pool", capacity=capacity)
        for i in range(count)
    ]


def decide(
    router: Router[FakeNode],
    key: str,
    now: float = 0.0,
    *,
    model: str = "m",
    adapter: str | None = None,
    exclude: Collection[str] = (),
) -> Decision[FakeNode]:
    """A decision that must exist."""
    decision = router.route(key, model, now, adapter=adapter, exclude=exclude)
    assert decision is not None, f"no route for {key}"
    return decision
