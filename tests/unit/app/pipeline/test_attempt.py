"""One attempt, over a stub proxy and a hand-made `Call`: the headers that name the request and
its replica, and what a failed attempt tells the metrics and the router."""

import time
from collections.abc import Mapping
from typing import cast

import pytest
from fastapi.responses import Response

from app.errors import EngineUnreachable
from app.observability.metrics import GatewayMetrics
from app.pipeline.attempt import Attempt
from app.pipeline.call import Call
from app.pipeline.proxy import Proxy, RetryableAnswer
from app.pools.registry import Lease
from app.reliability.admission import Admission
from tests.unit.app.pipeline.stubs import make_call, place, registry_of


class StubProxy:
    """Answers, or raises `failure`; records what each forward was given."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.forwarded: list[tuple[Call, Lease, Mapping[str, str]]] = []
        self._failure = failure

    async def forward(self, call: Call, lease: Lease, headers: Mapping[str, str]) -> Response:
        self.forwarded.append((call, lease, headers))
        lease.release()
        if self._failure is not None:
            raise self._failure
        return Response(b"answered")


def _engine_errors(metrics: GatewayMetrics, region: str, kind: str) -> float | None:
    return metrics.registry.get_sample_value("llm_engine_errors_total", {"pool": "p", "region": region, "kind": kind})


async def test_an_attempt_forwards_the_call_with_headers_naming_the_request_and_its_replica() -> None:
    registry, proxy = registry_of(2), StubProxy()
    call = make_call()
    placement = place(call, registry, Admission(registry, max_queue=4, queue_timeout_s=5))
    answer = await Attempt(registry, GatewayMetrics(), cast(Proxy, proxy))(call, placement)
    assert answer.body == b"answered"
    [(forwarded, lease, headers)] = proxy.forwarded
    assert (forwarded, lease) == (call, placement.lease)
    replica = placement.decision.node
    assert headers == {"x-request-id": "req-1", "x-route-region": replica.region, "x-route-replica": replica.id}


async def test_a_busy_answer_with_retry_after_holds_the_replica_and_counts_as_overloaded() -> None:
    registry, metrics = registry_of(2), GatewayMetrics()
    proxy = StubProxy(RetryableAnswer(Response(b"busy", status_code=503), retry_after=30))
    call = make_call()
    placement = place(call, registry, Admission(registry, max_queue=4, queue_timeout_s=5))
    with pytest.raises(RetryableAnswer):
        await Attempt(registry, metrics, cast(Proxy, proxy))(call, placement)
    replica = placement.decision.node
    assert not registry.router.outliers.admits(replica.name, time.monotonic() + 29)  # held for its Retry-After
    assert registry.router.outliers.admits(replica.name, time.monotonic() + 31)
    assert _engine_errors(metrics, replica.region, "overloaded") == 1


async def test_an_unreachable_engine_counts_as_a_connect_error() -> None:
    registry, metrics = registry_of(1), GatewayMetrics()
    proxy = StubProxy(EngineUnreachable("refused"))
    call = make_call()
    placement = place(call, registry, Admission(registry, max_queue=4, queue_timeout_s=5))
    with pytest.raises(EngineUnreachable):
        await Attempt(registry, metrics, cast(Proxy, proxy))(call, placement)
    assert _engine_errors(metrics, placement.decision.node.region, "connect") == 1
