"""create_app(settings, upstream): the whole gateway in process, over in-process engines."""

import json

from starlette.types import ASGIApp

from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import gateway_in_process, pool_settings

A, B = "http://engine-a", "http://engine-b"


def _chat(**fields: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | fields


async def test_a_chat_completion_goes_through_the_pipeline_to_an_engine() -> None:
    engine = CountingEngine()
    async with gateway_in_process(pool_settings([A]), {A: engine.app}) as gateway:
        response = await gateway.client.post("/v1/chat/completions", json=_chat(), headers={"x-request-id": "r-1"})
    assert response.status_code == 200, response.text
    assert response.json()["object"] == "chat.completion"
    assert response.headers["x-request-id"] == "r-1"
    assert response.headers["x-route-replica"] == "p-0"
    assert engine.executed["r-1"] == 1


async def test_a_stream_is_relayed_event_by_event_to_its_end() -> None:
    engine = CountingEngine()
    async with gateway_in_process(pool_settings([A]), {A: engine.app}) as gateway:
        response = await gateway.client.post("/v1/chat/completions", json=_chat(stream=True, max_tokens=3))
    assert response.status_code == 200
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert len([json.loads(e) for e in events[:-1]]) == 3


async def test_an_engine_that_is_down_is_retried_on_another() -> None:
    engines = {A: CountingEngine(), B: CountingEngine()}
    apps: dict[str, ASGIApp] = {url: engine.app for url, engine in engines.items()}
    async with gateway_in_process(pool_settings([A, B], health_interval_s=60), apps) as gateway:
        del gateway.engines[A]  # refused connections from now on: only a request finds out
        answers = [
            await gateway.client.post("/v1/chat/completions", json=_chat(), headers={"x-session-id": str(i)})
            for i in range(8)
        ]
    assert [r.status_code for r in answers] == [200] * 8
    assert {r.headers["x-route-replica"] for r in answers} == {"p-1"}
    assert sum(engines[B].executed.values()) == 8
