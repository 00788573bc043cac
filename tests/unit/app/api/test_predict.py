"""`/predict`: which model a request without `model` gets, whatever adapters come and go; and
its requests through the gateway in process, which go down the chat route's pipeline."""

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp

from app.api.predict import default_model
from app.errors import InvalidRequest, NoEngineAvailable
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings

ENGINE = "http://engine"
URLS = ["http://engine-0", "http://engine-1", "http://engine-2"]


def _card(model: str, parent: str | None = None) -> dict[str, Any]:
    return {"id": model, "object": "model"} | ({"parent": parent} if parent else {})


def test_the_one_base_model_is_chosen_whatever_adapters_are_published() -> None:
    base = _card("switchyard-tiny-v1")
    assert default_model(None, [base]) == "switchyard-tiny-v1"
    # `aaa` and `demo` sort before the base model: they must not take its place.
    adapters = [_card("aaa", "switchyard-tiny-v1"), _card("demo", "switchyard-tiny-v1")]
    assert default_model(None, [*adapters, base]) == "switchyard-tiny-v1"


def test_the_setting_wins() -> None:
    assert default_model("chosen", [_card("a"), _card("b")]) == "chosen"


def test_several_base_models_need_the_client_to_say_which() -> None:
    with pytest.raises(InvalidRequest) as refused:
        default_model(None, [_card("b"), _card("a")])
    assert refused.value.param == "model"
    assert "2 base models (a, b)" in refused.value.message


def test_nothing_served_is_a_503() -> None:
    with pytest.raises(NoEngineAvailable):
        default_model(None, [_card("adapter-only", "gone")])


async def test_predict_is_charged_like_the_chat_route() -> None:
    """`/predict` goes through the same limits: its tenant (here `anonymous`) has 3 a minute."""
    async with gateway_in_process(pool_settings([ENGINE], rate_limit_rpm=3), {ENGINE: CountingEngine().app}) as gateway:
        answers = [await gateway.client.post("/predict", json={"text": "hi"}) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429], answers[-1].text
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "2"
    assert answers[3].json()["error"]["code"] == "rate_limit_exceeded"


@pytest.fixture
def engines() -> list[CountingEngine]:
    return [CountingEngine(name=str(number)) for number in range(len(URLS))]


@pytest.fixture
async def gateway(engines: list[CountingEngine]) -> AsyncIterator[InProcessGateway]:
    """Three counting engines, as for the chat route's retries (tests/unit/app/pipeline/test_retries.py)."""
    apps: dict[str, ASGIApp] = {url: engine.app for url, engine in zip(URLS, engines, strict=True)}
    settings = pool_settings(URLS, health_interval_s=60, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
    async with gateway_in_process(settings, apps) as gateway:
        yield gateway


async def _predict(gateway: InProcessGateway, request_id: str, **headers: str) -> httpx.Response:
    body = {"text": "hi", "max_tokens": 2}
    sent = {"x-request-id": request_id, "x-session-id": request_id, **headers}
    return await gateway.client.post("/predict", json=body, headers=sent)


def _executions(engines: list[CountingEngine], request_id: str) -> int:
    return sum(engine.executed[request_id] for engine in engines)


async def test_predict_fails_over_like_the_chat_route(gateway: InProcessGateway, engines: list[CountingEngine]) -> None:
    """`/predict` runs the same pipeline: a replica that is down costs no request, the engine
    sees the request id, and the answer says where it was served (its trace: the tracing tests)."""
    del gateway.engines[URLS[0]]  # its connections are refused from now on
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = await _predict(gateway, request_id)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == "tok tok "
        assert response.json()["model"] == MODEL
        assert response.headers["x-request-id"] == request_id
        assert response.headers["x-route-replica"] != "p-0"
        assert response.headers["x-route-region"]
    assert [_executions(engines, i) for i in ids] == [1] * len(ids)


async def test_predict_answers_are_replayed_for_an_idempotency_key(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    request_id = uuid.uuid4().hex
    first = await _predict(gateway, request_id, **{"idempotency-key": request_id})
    again = await _predict(gateway, uuid.uuid4().hex, **{"idempotency-key": request_id})
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == request_id
    assert _executions(engines, request_id) == 1


async def test_predict_relays_the_engines_answer_when_no_retry_is_left(
    gateway: InProcessGateway, engines: list[CountingEngine]
) -> None:
    for engine in engines:
        engine.behave(fail_status=503, fail_times=1000, retry_after=2)
    response = await _predict(gateway, uuid.uuid4().hex)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert sum(engine.received for engine in engines) == 3  # retried on every replica, as chat is
