"""`/predict`: which model a request without `model` gets, whatever adapters come and go; and
its requests through the gateway in process, which go down the chat route's pipeline."""

from typing import Any

import pytest

from app.api.predict import default_model
from app.errors import InvalidRequest, NoEngineAvailable
from harness.counting_engine import CountingEngine
from harness.inprocess import gateway_in_process, pool_settings

ENGINE = "http://engine"


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
