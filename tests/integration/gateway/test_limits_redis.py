"""Per-tenant rate limits in a real Redis: the rules of the in-process limiter
(tests/unit/app/reliability/test_limits.py), atomic under concurrency, and no refusal while Redis is down."""

import asyncio

import pytest

from app.errors import RateLimited
from app.reliability.limits import Limits, Policy, RedisLimiter
from harness.servers import Redis


async def _refused(limiter: RedisLimiter, subject: str, tokens: int) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        await limiter.charge(subject, tokens)
    return refused.value


async def test_redis_applies_the_same_rules_atomically(redis: Redis) -> None:
    limiter = RedisLimiter(Policy(Limits(rpm=10, tpm=1000), {}), redis.url)
    try:
        outcomes = await asyncio.gather(*(limiter.charge("a", 50) for _ in range(50)), return_exceptions=True)
        assert sum(not isinstance(o, BaseException) for o in outcomes) == 10
        assert all(isinstance(o, RateLimited) for o in outcomes if isinstance(o, BaseException))
        refused = await _refused(limiter, "a", 50)
        assert refused.type == "requests"
        assert 5000 < int(refused.headers["retry-after-ms"]) <= 6000  # 6 s a request at 10 a minute
        # Redis's clock moves on between calls: a few tokens come back meanwhile.
        headers = await limiter.charge("b", 900)
        assert 100 <= int(headers["x-ratelimit-remaining-tokens"]) <= 110
        assert (await _refused(limiter, "b", 200)).type == "tokens"
        await limiter.correct("b", -500)
        assert 400 <= int((await limiter.charge("b", 200))["x-ratelimit-remaining-tokens"]) <= 410
    finally:
        await limiter.aclose()


async def test_redis_down_lets_requests_through(redis: Redis) -> None:
    limiter = RedisLimiter(Policy(Limits(rpm=1, tpm=None), {}), redis.url)
    redis.stop()
    try:
        assert await limiter.charge("a", 0) == {}
        assert await limiter.charge("a", 0) == {}
    finally:
        await limiter.aclose()
