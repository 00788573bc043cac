"""One attempt: the call sent to the replica it was placed on, logged, traced and counted.

What the attempt learns about the replica goes to the metrics (its failures by kind) and to
the router (an engine's Retry-After keeps new requests off that replica until it is over).
In a recorded trace, the routing decision is the server span's attributes (a retry's
replace the failed attempt's, which stays as an event): a span of its own per attempt cost a
traced request more than it told (docs/benchmarks.md).
"""

import logging
import time

from fastapi.responses import Response, StreamingResponse

from app.context import RequestContext
from app.errors import EngineUnreachable
from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Placement
from app.pipeline.proxy import AttemptTimeout, Proxy, RetryableAnswer
from app.pools.registry import PoolRegistry
from router import Reason

__all__ = ["Attempt"]

log = logging.getLogger("app.route")


class Attempt:
    def __init__(self, registry: PoolRegistry, metrics: GatewayMetrics, proxy: Proxy) -> None:
        self._registry = registry
        self._metrics = metrics
        self._proxy = proxy

    async def __call__(self, call: Call, placement: Placement) -> Response:
        decision = placement.decision
        replica, rid = decision.node, call.context.request_id
        if log.isEnabledFor(logging.INFO):  # the decision is explained only when logged
            fields = {"request_id": rid, "tenant": call.tenant, "route": call.path, "region": decision.region}
            fields |= {"replica": replica.id, "reason": decision.reason.value}
            log.info("%s %s -> %s", rid, call.path, decision, extra=fields)
        headers = {"x-request-id": rid, "x-route-region": decision.region, "x-route-replica": replica.id}
        context = call.context
        if context.span is not None:
            context.annotate(_decision(placement))
        try:
            response = await self._proxy.forward(call, placement.lease, headers)
        except (EngineUnreachable, AttemptTimeout) as failure:
            self._failed(context, placement, "connect" if isinstance(failure, EngineUnreachable) else "timeout")
            raise
        except RetryableAnswer as answer:
            self._failed(
                context, placement, "overloaded" if answer.response.status_code in (429, 503) else "server_error"
            )
            if answer.retry_after is not None:
                self._registry.router.hold(replica.name, time.monotonic() + answer.retry_after)
            raise
        if context.span is not None and isinstance(response, StreamingResponse):
            context.on_stream_end(lambda events, _: context.annotate({"switchyard.events": events}))
        return response

    def _failed(self, context: RequestContext, placement: Placement, kind: str) -> None:
        replica = placement.decision.node
        self._metrics.engine_errors(replica.pool.name, replica.pool.region, kind).inc()
        if context.span is not None:
            context.span.add_event("switchyard.attempt_failed", {**_decision(placement), "error.type": kind})


def _decision(placement: Placement) -> dict[str, str | int | bool]:
    """The routing decision as span attributes; the ring's home and the attempt's number only
    when they tell something (each attribute costs a recorded request about 3 µs)."""
    decision = placement.decision
    attributes: dict[str, str | int | bool] = {
        "switchyard.replica": decision.node.id,
        "switchyard.region": decision.region,
        "switchyard.reason": decision.reason.value,
    }
    if decision.reason is not Reason.AFFINITY:
        attributes["switchyard.home"] = decision.home
    if placement.attempt > 1:
        attributes["switchyard.attempt"] = placement.attempt
    return attributes
