"""Per-tenant rate limits: the bucket arithmetic on a clock the test moves, and the answers
through the gateway in process (the same rules in a real Redis: tests/integration/gateway/test_limits_redis.py)."""

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from app.errors import RateLimited
from app.reliability.limits import (
    InProcessLimiter,
    Limits,
    Policy,
    RateLimiter,
    estimate_prompt_tokens,
    estimate_tokens,
)
from harness.counting_engine import CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _in_process(rpm: int | None, tpm: int | None, **own: Limits) -> tuple[InProcessLimiter, Clock]:
    clock = Clock()
    return InProcessLimiter(Policy(Limits(rpm, tpm), own), clock), clock


async def _refused(limiter: RateLimiter, subject: str, tokens: int) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        await limiter.charge(subject, tokens)
    return refused.value


async def test_a_minute_of_requests_at_once_then_at_the_limits_pace() -> None:
    limiter, clock = _in_process(rpm=3, tpm=None)
    remaining = [(await limiter.charge("a", 0))["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = await _refused(limiter, "a", 0)
    assert refused.status == 429
    assert refused.type == "requests"
    assert refused.code == "rate_limit_exceeded"
    assert refused.headers["retry-after"] == "20"  # one request every 20 s at 3 a minute
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert await limiter.charge("b", 0)  # another tenant has its own bucket
    clock.now += 19.9
    await _refused(limiter, "a", 0)
    clock.now += 0.2
    assert (await limiter.charge("a", 0))["x-ratelimit-remaining-requests"] == "0"


async def test_tokens_are_charged_up_front_and_corrected() -> None:
    limiter, clock = _in_process(rpm=None, tpm=600)  # 10 tokens a second
    headers = await limiter.charge("a", 500)
    assert headers["x-ratelimit-remaining-tokens"] == "100"
    assert "x-ratelimit-limit-requests" not in headers
    refused = await _refused(limiter, "a", 200)
    assert refused.type == "tokens"
    assert refused.headers["retry-after-ms"] == "10000"  # 100 more tokens: 10 s
    await limiter.correct("a", -300)  # the answer used 200 of the 500 estimated
    assert (await limiter.charge("a", 200))["x-ratelimit-remaining-tokens"] == "200"
    clock.now += 60
    assert (await limiter.charge("a", 600))["x-ratelimit-remaining-tokens"] == "0"


async def test_a_refused_request_charges_neither_limit() -> None:
    limiter, _ = _in_process(rpm=2, tpm=100)
    await limiter.charge("a", 90)
    await _refused(limiter, "a", 50)  # over the tokens, under the requests
    headers = await limiter.charge("a", 10)
    assert headers["x-ratelimit-remaining-requests"] == "0"  # the refused one did not count
    assert headers["x-ratelimit-remaining-tokens"] == "0"


async def test_more_than_the_whole_limit_waits_for_a_full_bucket() -> None:
    limiter, clock = _in_process(rpm=None, tpm=100)
    await limiter.charge("a", 1000)
    refused = await _refused(limiter, "a", 1000)
    assert refused.headers["retry-after"] == "60"
    clock.now += 60
    await limiter.charge("a", 1000)


async def test_own_limits_for_named_subjects() -> None:
    limiter, _ = _in_process(rpm=1, tpm=None, vip=Limits(rpm=100, tpm=None))
    for _ in range(50):
        await limiter.charge("vip", 0)
    await limiter.charge("plain", 0)
    await _refused(limiter, "plain", 0)


def test_the_estimate_is_the_prompt_bytes_over_four_plus_the_completion_limit() -> None:
    assert estimate_tokens(b"x" * 400, 50) == 150
    assert estimate_tokens(b"x" * 401, None) == 101 + 256


ENGINE = "http://engine"
STREAM_TPM = 400


@pytest.fixture
async def gateway() -> AsyncIterator[InProcessGateway]:
    limits = {
        "big": {"rpm": 1000, "tpm": 100},
        **{s: {"rpm": 1000, "tpm": STREAM_TPM} for s in ("counted", "reported")},
    }
    settings = pool_settings([ENGINE], rate_limit_rpm=3, rate_limits=limits)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        yield gateway


async def _chat(gateway: InProcessGateway, user: str, max_tokens: int = 4) -> httpx.Response:
    body = {
        "model": "counting",
        "messages": [{"role": "user", "content": "hi"}],
        "user": user,
        "max_tokens": max_tokens,
    }
    return await gateway.client.post("/v1/chat/completions", json=body)


async def test_the_gateway_answers_429_with_the_openai_headers(gateway: InProcessGateway) -> None:
    answers = [await _chat(gateway, "t1") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
    refused = answers[3].json()["error"]
    assert (refused["type"], refused["code"]) == ("requests", "rate_limit_exceeded")
    assert 1 <= int(answers[3].headers["retry-after"]) <= 20
    assert (await _chat(gateway, "t2")).status_code == 200  # tenants apart


async def test_tokens_are_corrected_by_the_answers_usage(gateway: InProcessGateway) -> None:
    # `big` may spend 100 tokens a minute; a request is estimated at its body's bytes / 4 plus
    # max_tokens 64 (about 90) and uses 65 (the counting engine's usage: 1 prompt + 64).
    first = await _chat(gateway, "big", max_tokens=64)
    assert first.status_code == 200
    assert first.json()["usage"]["total_tokens"] == 65
    second = await _chat(gateway, "big", max_tokens=64)
    assert second.status_code == 429  # 35 left: not enough for the estimate
    assert 35 <= int(second.headers["x-ratelimit-remaining-tokens"]) <= 40  # uncorrected, 10 (+ the refill)


async def _exact(gateway: InProcessGateway, body: dict[str, object]) -> tuple[httpx.Response, int]:
    """Send exactly these bytes; the answer, and the gateway's up-front estimate for them."""
    content = json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    response = await gateway.client.post("/v1/chat/completions", content=content, headers=headers)
    completion_limit = body.get("max_tokens")
    return response, estimate_tokens(content, completion_limit if isinstance(completion_limit, int) else None)


@pytest.mark.parametrize(
    ("user", "stream_options"),
    [("counted", None), ("reported", {"include_usage": True})],
)
async def test_a_streams_tokens_are_corrected_when_it_ends(
    gateway: InProcessGateway, user: str, stream_options: dict[str, bool] | None
) -> None:
    """Charged up front for 256 completion tokens (no max_tokens), the 4-event stream then costs
    its usage as the engine reported it (1 prompt + 4), else the prompt's estimate + 4 events."""
    body: dict[str, object] = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "user": user}
    body |= {"stream": True} | ({"stream_options": stream_options} if stream_options else {})
    streamed, estimate = await _exact(gateway, body)
    assert streamed.status_code == 200
    assert streamed.text.count("tok") - streamed.text.count("_tokens") == 4
    used = 5 if stream_options else estimate_prompt_tokens(json.dumps(body).encode()) + 4
    await asyncio.sleep(0.3)  # the correction runs as the stream closes
    after, estimate_after = await _exact(gateway, {**body, "stream": False, "max_tokens": 1})
    assert after.status_code == 200
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert STREAM_TPM - used - estimate_after <= remaining <= STREAM_TPM - used - estimate_after + 10  # + refill
    assert estimate - used > 200  # so an uncorrected charge could not pass the check above
