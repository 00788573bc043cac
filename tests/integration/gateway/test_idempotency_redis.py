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


async def test_a_retried_request_executes_once_and_replays_the_answer(
    gateway: InProcessGateway, engine: CountingEngine
) -> None:
    first = await _post(gateway, '"order-1"')
    again = await _post(gateway, '"order-1"')
    assert (first.status_code, again.status_code) == (200, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert _executed(engine) == 1


async def test_fifty_concurrent_duplicates_execute_once(gateway: InProcessGateway, engine: CountingEngine) -> None:
    engine.behave(chunk_delay_s=0.1)  # 0.4 s per answer
    answers = await asyncio.gather(*(_post(gateway, "dup-50") for _ in range(50)))
    statuses = [(a.status_code, "idempotent-replayed" in a.headers) for a in answers]
    assert statuses.count((200, False)) == 1  # the one that ran
    assert all(s in ((200, False), (200, True), (409, False)) for s in statuses)
    assert _executed(engine) == 1


async def test_the_same_key_with_another_body_is_422(gateway: InProcessGateway) -> None:
    assert (await _post(gateway, "k-422")).status_code == 200
    other = await _post(gateway, "k-422", CHAT | {"max_tokens": 3})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Key order and spacing are not a different body.
    same = await gateway.client.post(
        "/v1/chat/completions",
        content=b'{ "messages": [{"content": "hi", "role": "user"}], "model": "counting" }',
        headers={"idempotency-key": "k-422", "content-type": "application/json"},
    )
    assert same.headers.get("idempotent-replayed") == "true"


async def test_a_completed_stream_replays_byte_identical(gateway: InProcessGateway, engine: CountingEngine) -> None:
    body = CHAT | {"stream": True, "max_tokens": 6}
    first = await _post(gateway, "stream-1", body)
    again = await _post(gateway, "stream-1", body)
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert first.content.rstrip().endswith(b"data: [DONE]")
    assert _executed(engine) == 1


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
