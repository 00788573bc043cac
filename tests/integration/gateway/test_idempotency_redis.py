"""Idempotency keys kept in a real Redis (started here, so it can be stopped), through the
gateway in process over a counting engine that records every execution: the protocol's
answers as they come from the Redis store (the whole protocol, on the in-process store:
tests/unit/app/reliability/test_idempotency.py), and keyed requests refused while it is down."""

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings
from harness.servers import Redis

# The protocol's own tests, run here again with this module's gateway, whose records are in Redis.
from tests.unit.app.reliability.test_idempotency import (  # noqa: F401  (collected by pytest here)
    test_a_completed_stream_replays_byte_identical,
    test_a_retried_request_executes_once_and_replays_the_answer,
    test_fifty_concurrent_duplicates_execute_once,
    test_the_same_key_with_another_body_is_422,
)

ENGINE = "http://engine"
CHAT: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


@pytest.fixture
async def gateway(engine: CountingEngine, redis: Redis) -> AsyncIterator[InProcessGateway]:
    async with gateway_in_process(pool_settings([ENGINE], redis_url=redis.url), {ENGINE: engine.app}) as gateway:
        yield gateway


def _executed(engine: CountingEngine) -> int:
    return sum(engine.executed.values())


async def _post(
    gateway: InProcessGateway, key: str | None, body: dict[str, object] = CHAT, **headers: str
) -> httpx.Response:
    sent = {"idempotency-key": key, **headers} if key is not None else dict(headers)
    return await gateway.client.post("/v1/chat/completions", json=body, headers=sent)


async def test_a_failure_before_the_first_byte_releases_the_key(
    gateway: InProcessGateway, engine: CountingEngine
) -> None:
    engine.behave(fail_status=503, fail_times=100)
    assert (await _post(gateway, "retry-me")).status_code == 503
    await asyncio.sleep(0.05)  # the key is freed just after the answer (over a network, before a retry arrives)
    engine.behave()
    after = await _post(gateway, "retry-me")
    assert after.status_code == 200
    assert "idempotent-replayed" not in after.headers
    assert _executed(engine) == 1


async def test_store_down_refuses_keyed_requests_and_lets_the_rest_through(
    gateway: InProcessGateway, redis: Redis, engine: CountingEngine
) -> None:
    assert (await _post(gateway, "before")).status_code == 200
    redis.stop()
    keyed = await _post(gateway, "after")
    assert keyed.status_code == 503
    assert keyed.json()["error"]["code"] == "idempotency_unavailable"
    assert (await _post(gateway, None)).status_code == 200
    assert _executed(engine) == 2
