"""The choice of a replica for a routing key: the router's decision, or the error a client should see."""

from collections.abc import Collection

from app.errors import ModelNotFound, NoEngineAvailable
from app.pools.registry import PoolRegistry, Replica
from router import Decision

__all__ = ["choose"]


def choose(
    registry: PoolRegistry, model: str, key: str, now: float, *, exclude: Collection[str] = ()
) -> Decision[Replica]:
    """The router's decision, or the error a client should see when there is none.

    ModelNotFound when no replica that has ever answered serves the model, and
    NoEngineAvailable when those that serve it are all down, draining or tried, or none answers.
    """
    adapter = model if registry.is_adapter(model) else None
    decision = registry.router.route(key, model, now, adapter=adapter, exclude=exclude)
    if decision is not None:
        return decision
    if exclude or any(r.serves(model) for r in registry.replicas()) or not registry.any_healthy():
        raise NoEngineAvailable(f"No engine that serves `{model}` is reachable right now; retry shortly.")
    raise ModelNotFound(model)
