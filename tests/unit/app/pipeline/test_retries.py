"""Retries: the layer over a stub `next` (another replica gets a retryable answer's call; the
last answer goes back when no replica is left), then failover through the gateway in process:
three counting engines, each told to fail, stall or refuse connections. Every request carries
its own x-request-id, so each engine's count says how many times a request was executed.
(Faults only a TCP connection shows, a reset or a stream cut mid-way:
tests/integration/gateway/test_retries.py.)"""

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi.responses import Response
from starlette.types import ASGIApp

from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Forward, Placement
from app.pipeline.proxy import RetryableAnswer
from app.pipeline.retries import Retrying, RetryPolicy
from app.pools.registry import PoolRegistry
from app.reliability.admission import Admission
from app.reliability.retry_budget import RetryBudget
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings
from tests.unit.app.pipeline.stubs import make_call, place, registry_of


def _retrying(registry: PoolRegistry, metrics: GatewayMetrics, next: Forward) -> tuple[Retrying, Admission]:
    admission = Admission(registry, max_queue=4, queue_timeout_s=5)
    policy = RetryPolicy(max_attempts=3, backoff_s=0.001, backoff_max_s=0.002)
    return Retrying(policy, RetryBudget(0.1, minimum=3), admission, registry, metrics, next), admission


def _busy(replica: str) -> RetryableAnswer:
    return RetryableAnswer(Response(replica.encode(), status_code=503), retry_after=None)


async def test_retrying_sends_a_retryable_answers_call_to_another_replica() -> None:
    registry, metrics = registry_of(3), GatewayMetrics()
    tried: list[tuple[str, int]] = []

    async def next(call: Call, placement: Placement) -> Response:
        tried.append((placement.decision.node.name, placement.attempt))
        placement.lease.release()
        if len(tried) == 1:
            raise _busy(placement.decision.node.name)
        return Response(b"answered")

    retrying, admission = _retrying(registry, metrics, next)
    call = make_call()
    answer = await retrying(call, place(call, registry, admission))
    assert answer.body == b"answered"
    assert [attempt for _, attempt in tried] == [1, 2]
    assert tried[0][0] != tried[1][0]
    assert metrics.registry.get_sample_value("llm_retries_total", {"pool": "p"}) == 1


async def test_retrying_relays_the_last_answer_when_no_replica_is_left() -> None:
    registry = registry_of(2)  # fewer replicas than attempts
    tried: list[str] = []

    async def next(call: Call, placement: Placement) -> Response:
        tried.append(placement.decision.node.name)
        placement.lease.release()
        raise _busy(placement.decision.node.name)

    retrying, admission = _retrying(registry, GatewayMetrics(), next)
    call = make_call()
    answer = await retrying(call, place(call, registry, admission))
    assert answer.status_code == 503
    assert len(set(tried)) == len(tried) == 2  # each replica once
    assert answer.body == tried[-1].encode()  # the last one's own answer


URLS = ["http://engine-0", "http://engine-1", "http://engine-2"]
SETTINGS: dict[str, Any] = {
    "health_interval_s": 60,  # only the requests themselves tell the gateway
    "attempt_timeout_s": 1.0,
    "retry_backoff_s": 0.01,
    "retry_backoff_max_s": 0.05,
}


@pytest.fixture
def engines() -> list[CountingEngine]:
    return [CountingEngine(name=str(number)) for number in range(len(URLS))]


@pytest.fixture
async def gateway(engines: list[CountingEngine]) -> AsyncIterator[InProcessGateway]:
    apps: dict[str, ASGIApp] = {url: engine.app for url, engine in zip(URLS, engines, strict=True)}
    async with gateway_in_process(pool_settings(URLS, **SETTINGS), apps) as gateway:
        yield gateway


async def _chat(gateway: InProcessGateway, request_id: str, *, timeout_s: float | None = None) -> httpx.Response:
    headers = {"x-request-id": request_id, "x-session-id": request_id}
    if timeout_s is not None:
        headers["x-request-timeout"] = str(timeout_s)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return await gateway.client.post("/v1/chat/completions", json=body, headers=headers)


def _executions(engines: list[CountingEngine], request_id: str) -> int:
    return sum(engine.executed[request_id] for engine in engines)


async def test_an_engine_that_is_down_is_served_by_another_replica(
    gateway: InProcessGateway, engines: list[CountingEngine], caplog: pytest.LogCaptureFixture
) -> None:
    del gateway.engines[URLS[0]]  # its connections are refused from now on
    ids = [uuid.uuid4().hex for _ in range(12)]
    with caplog.at_level(logging.WARNING):
        for request_id in ids:
            response = await _chat(gateway, request_id)
            assert response.status_code == 200, response.text
            assert response.headers["x-route-replica"] != "p-0"
    assert [_executions(engines, i) for i in ids] == [1] * len(ids)
    assert sum(engines[0].executed.values()) == 0
    # The operator hears of it once, whoever noticed first (a request or a probe).
    down = [r.getMessage() for r in caplog.records if "replica p-0 (" in r.getMessage() and "is down" in r.getMessage()]
    assert len(down) == 1, down


async def test_an_engine_503_is_served_by_another_replica_and_its_retry_after_kept(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    engines[0].behave(fail_status=503, fail_times=1000, retry_after=30)
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = await _chat(gateway, request_id)
        assert response.status_code == 200, response.text
    assert [_executions(engines, i) for i in ids] == [1] * len(ids)
    # Held for its Retry-After once it said 503: asked at most once in all.
    assert engines[0].received <= 1


async def test_an_engine_answer_is_relayed_when_no_retry_is_left(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    for engine in engines:
        engine.behave(fail_status=503, fail_times=1000, retry_after=2)
    response = await _chat(gateway, uuid.uuid4().hex)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert sum(engine.received for engine in engines) == 3  # max_attempts, each on another replica


async def test_a_stalled_engine_times_out_per_attempt_and_the_next_replica_answers(
    engines: list[CountingEngine],
) -> None:
    """Each attempt on the stalled engine ends after its own second, and another replica answers.
    The retry budget is set out of the way (its own test is elsewhere): which replica each key
    tries first is the ring's, so how many attempts stall is counted, not assumed."""
    apps: dict[str, ASGIApp] = {url: engine.app for url, engine in zip(URLS, engines, strict=True)}
    engines[0].behave(stall_s=60)
    async with gateway_in_process(pool_settings(URLS, **SETTINGS, retry_budget_min=100), apps) as gateway:
        started = time.monotonic()
        routes = [await _chat(gateway, uuid.uuid4().hex) for _ in range(6)]
        elapsed = time.monotonic() - started
        assert all(r.status_code == 200 for r in routes), [(r.status_code, r.text[:300]) for r in routes]
        assert all(r.headers["x-route-replica"] != "p-0" for r in routes)
        stalled = engines[0].received  # each of these attempts timed out after 1 s
        assert elapsed < stalled * 1.0 + 6 * 0.5 + 1.0
        await asyncio.sleep(0.05)  # in process, a cancelled attempt ends at the loop's next turns
        assert engines[0].stalled == 0  # the stalled attempts were cancelled, not left open


async def test_when_every_engine_stalls_the_deadline_bounds_the_request(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    for engine in engines:
        engine.behave(stall_s=60)
    started = time.monotonic()
    response = await _chat(gateway, uuid.uuid4().hex, timeout_s=2.5)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] in ("upstream_timeout", "deadline_exceeded")
    assert elapsed < 2.5 + 0.5


async def test_when_every_engine_fails_retries_stay_within_the_budget(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    for engine in engines:
        engine.behave(fail_status=502, fail_times=10_000)
    requests = 40
    for _ in range(requests):
        assert (await _chat(gateway, uuid.uuid4().hex)).status_code == 502
    sent = sum(engine.received for engine in engines)
    # Budget: 10 % of requests plus 3 per 10 s window; without it, 3 attempts each (120).
    assert requests <= sent <= requests + int(0.1 * requests) + 3
