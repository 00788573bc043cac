"""One attempt: the call sent to the replica it was placed on, logged, traced and counted.

What the attempt learns about the replica goes to the metrics (its failures by kind) and to
the router (an engine's Retry-After keeps new requests off that replica until it is over).
"""

import logging
import time

from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from app.errors import EngineUnreachable
from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Placement
from app.pipeline.proxy import AttemptTimeout, Proxy, RetryableAnswer
from app.pools.registry import PoolRegistry
from protocol import tracing

__all__ = ["Attempt"]

log = logging.getLogger("app.route")
tracer = trace.get_tracer("switchyard.gateway")


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
        span: trace.Span = trace.INVALID_SPAN
        streamed = False
        try:
            # The span lasts as long as the attempt: for a stream, until its last event. The
            # routing decision is in its attributes (a span of its own cost more than it told).
            with tracing.span(tracer, "upstream", kind=SpanKind.CLIENT, end_on_exit=False) as span:
                if span.is_recording():
                    span.set_attributes(_decision(placement))
                response = await self._proxy.forward(call, placement.lease, headers)
                span.set_attribute("http.response.status_code", response.status_code)
                if span.is_recording() and isinstance(response, StreamingResponse):
                    call.context.on_stream_end(lambda events, _: _end_stream_span(span, events))
                    streamed = True
                return response
        except (EngineUnreachable, AttemptTimeout) as failure:
            kind = "connect" if isinstance(failure, EngineUnreachable) else "timeout"
            self._metrics.engine_errors(replica.pool.name, replica.pool.region, kind).inc()
            raise
        except RetryableAnswer as answer:
            kind = "overloaded" if answer.response.status_code in (429, 503) else "server_error"
            self._metrics.engine_errors(replica.pool.name, replica.pool.region, kind).inc()
            if answer.retry_after is not None:
                self._registry.router.hold(replica.name, time.monotonic() + answer.retry_after)
            raise
        finally:
            if not streamed:
                span.end()


def _decision(placement: Placement) -> dict[str, str | int | bool]:
    decision = placement.decision
    return {
        "switchyard.replica": decision.node.id,
        "switchyard.attempt": placement.attempt,
        "switchyard.region": decision.region,
        "switchyard.reason": decision.reason.value,
        "switchyard.home": decision.home,
    }


def _end_stream_span(span: trace.Span, events: int) -> None:
    span.set_attribute("switchyard.events", events)
    span.end()
