"""Which replica serves a request. The router package replaces `choose_replica` wholesale."""

from app.errors import ModelNotFound, NoEngineAvailable
from app.pools import PoolRegistry, Replica

__all__ = ["choose_replica"]


def choose_replica(registry: PoolRegistry, model: str, region: str) -> Replica:
    """A healthy replica that serves `model`: own region first, then the least loaded.

    Raises ModelNotFound when no replica that has ever answered serves the model,
    and NoEngineAvailable when those that serve it are all down, or none answers.
    """
    serving = [r for r in registry.replicas() if r.serves(model)]
    healthy = [r for r in serving if r.healthy]
    if not healthy:
        if serving or not registry.any_healthy():
            raise NoEngineAvailable(f"No engine that serves `{model}` is reachable right now; retry shortly.")
        raise ModelNotFound(model)
    turn = registry.next_turn()
    best = min(
        range(len(healthy)),
        key=lambda i: (healthy[i].pool.region != region, healthy[i].load, (i - turn) % len(healthy)),
    )
    return healthy[best]
