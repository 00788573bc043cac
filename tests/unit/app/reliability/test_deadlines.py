"""A request's deadline: from its timeout headers, capped, and refused when it is nonsense
(by the gateway too, in process)."""

import time

import pytest

from app.errors import InvalidRequest
from app.reliability.deadlines import Deadline
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import gateway_in_process, pool_settings


def test_deadline_from_our_header_then_the_sdk_header_then_the_default() -> None:
    now = time.monotonic()
    ours = Deadline.from_headers({"x-request-timeout": "5", "x-stainless-timeout": "50"}, default_s=600, max_s=3600)
    sdk = Deadline.from_headers({"x-stainless-timeout": "50"}, default_s=600, max_s=3600)
    default = Deadline.from_headers({}, default_s=600, max_s=3600)
    capped = Deadline.from_headers({"x-request-timeout": "99999"}, default_s=600, max_s=3600)
    assert [round(d.at - now) for d in (ours, sdk, default, capped)] == [5, 50, 600, 3600]
    assert not ours.expired


@pytest.mark.parametrize("value", ["", "abc", "-3", "0", "nan", "inf", "-inf"])
def test_deadline_refuses_nonsense(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Deadline.from_headers({"x-stainless-timeout": value}, default_s=600, max_s=3600)
    assert caught.value.param == "x-stainless-timeout"


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf"])
async def test_a_bad_timeout_header_is_refused(value: str) -> None:
    engine = CountingEngine()
    async with gateway_in_process(pool_settings(["http://engine"]), {"http://engine": engine.app}) as gateway:
        response = await gateway.client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
            headers={"x-request-timeout": value},
        )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-request-timeout"
    assert engine.received == 0
