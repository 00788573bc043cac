"""The choice of a replica for a routing key: the router's decision, or the error a client should see."""

from collections.abc import Collection

from opentelemetry import trace

from app.errors import ModelNotFound, NoEngineAvailable
from app.pools.registry import PoolRegistry, Replica
from protocol import tracing
from router import Decision

__all__ = ["choose", "trace_decision"]

tracer = trace.get_tracer("switchyard.gateway")


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


def trace_decision(decision: Decision[Replica]) -> None:
    """The routing decision as a span of its own, with its reasons."""
    with tracing.span(tracer, "route") as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "switchyard.region": decision.region,
                    "switchyard.replica": decision.node.id,
                    "switchyard.reason": decision.reason.value,
                    "switchyard.home": decision.home,
                }
            )
