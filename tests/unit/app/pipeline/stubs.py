"""What the pipeline's layer tests hand-make: a `Call`, and a registry of replicas that are up
but never called (a layer's `next` is a stub, so nothing reaches them)."""

import time

from starlette.requests import Request

from app.context import RequestContext
from app.factory import build_router
from app.pipeline.call import Call, Placement
from app.pools.choice import choose
from app.pools.registry import PoolRegistry
from app.reliability.admission import Admission
from app.reliability.deadlines import Deadline
from app.settings import GatewaySettings, PoolSettings

__all__ = ["MODEL", "make_call", "place", "registry_of"]

MODEL = "m"


def make_call(*headers: tuple[bytes, bytes], tenant: str = "t", tokens: int = 100, timeout_s: float = 30) -> Call:
    """A chat completion call, with `headers` on its request."""
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    request = Request({"type": "http", "headers": list(headers)})
    context = RequestContext(request_id="req-1", started=time.perf_counter())
    route = "/v1/chat/completions"
    deadline = Deadline(time.monotonic() + timeout_s)
    return Call(request, context, route, body, route, body, MODEL, "key", tenant, tokens, deadline)


def registry_of(replicas: int, max_load: int = 64) -> PoolRegistry:
    """A pool `p` of `replicas` that serve MODEL, all up."""
    urls = [f"http://r{i}:1" for i in range(replicas)]
    pool = PoolSettings.model_validate({"name": "p", "replicas": urls, "max_load": max_load})
    registry = PoolRegistry([pool], build_router(GatewaySettings()))
    for replica in registry.replicas():
        replica.mark_up({MODEL: {"id": MODEL}}, rtt_ms=1.0)
    return registry


def place(call: Call, registry: PoolRegistry, admission: Admission) -> Placement:
    """The first attempt's placement, as admission gives it."""
    decision = choose(registry, call.model, call.routing_key, time.monotonic())
    return Placement(decision, admission.lease(call.tenant, decision.node), 1)
