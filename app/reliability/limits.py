"""Per-tenant rate limits: requests and tokens per minute for each subject.

Each limit is a GCRA bucket (the generic cell rate algorithm): a subject may spend a whole
minute's allowance at once, then at the limit's pace. A request costs one request and its
estimated tokens (prompt bytes / 4 plus its completion limit) up front; when a non-streamed
answer reports its usage, the difference is charged or refunded. Both limits are checked
and charged together, atomically: in Redis (one Lua script, shared by every worker and
gateway of a region, on Redis's clock), or in this process for the embedded default.
A request over either limit gets 429 `rate_limit_exceeded` with Retry-After; every answer
carries OpenAI's `x-ratelimit-*` headers.
"""

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from starlette.responses import Response, StreamingResponse

from app.errors import RateLimited
from app.settings import GatewaySettings
from protocol import usage_count

__all__ = [
    "InProcessLimiter",
    "Limits",
    "Policy",
    "RateLimiter",
    "RedisLimiter",
    "build_limiter",
    "estimate_prompt_tokens",
    "estimate_tokens",
    "tokens_used",
]

WINDOW_S = 60.0
DEFAULT_COMPLETION_TOKENS = 256  # a request that sets no completion limit is charged this, then corrected


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None
    tpm: int | None


def estimate_prompt_tokens(body: bytes) -> int:
    """Prompt tokens from the body's size: about 4 bytes a token."""
    return math.ceil(len(body) / 4)


def estimate_tokens(body: bytes, completion_limit: int | None) -> int:
    """The prompt's estimate plus the completion's limit."""
    return estimate_prompt_tokens(body) + (completion_limit or DEFAULT_COMPLETION_TOKENS)


def tokens_used(response: Response) -> int | None:
    """`usage.total_tokens` of a whole (non-streamed) answer; None for a stream, an error or no usage."""
    if isinstance(response, StreamingResponse) or response.status_code != 200:
        return None
    return usage_count(bytes(response.body), "total_tokens")


@dataclass(frozen=True, slots=True)
class _Bucket:
    """One limit's state after a charge: what the headers say."""

    limit: int
    remaining: int
    reset_s: float


def _gcra(tat: float, now: float, limit: int, cost: float) -> tuple[float, float]:
    """(the new theoretical arrival time, 0) when `cost` fits, else (the old one, seconds to wait).

    A cost above the whole limit is charged as the whole limit: it waits for a full bucket."""
    interval = WINDOW_S / limit
    start = max(tat, now)
    new = start + min(cost, limit) * interval
    wait = new - now - WINDOW_S
    return (new, 0.0) if wait <= 1e-9 else (tat, wait)


def _bucket(tat: float, now: float, limit: int) -> _Bucket:
    interval = WINDOW_S / limit
    used = max(0.0, tat - now)
    return _Bucket(limit, max(0, math.floor((WINDOW_S - used) / interval + 1e-6)), used)


def _headers(requests: _Bucket | None, tokens: _Bucket | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, bucket in (("requests", requests), ("tokens", tokens)):
        if bucket is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(bucket.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(bucket.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = f"{bucket.reset_s:.3f}s"
    return headers


class RateLimiter(Protocol):
    async def charge(self, subject: str, tokens: int) -> dict[str, str]:
        """Charge one request and `tokens`; their x-ratelimit headers, or RateLimited."""
        ...

    async def correct(self, subject: str, tokens: int) -> None:
        """Charge (positive) or refund (negative) tokens once the real usage is known."""
        ...


class Policy:
    """Each subject's limits: its own, else the default."""

    def __init__(self, default: Limits, per_subject: dict[str, Limits]) -> None:
        self._default = default
        self._per_subject = per_subject

    def limits(self, subject: str) -> Limits:
        return self._per_subject.get(subject, self._default)


def _refusal(kind: str, wait_s: float, headers: dict[str, str]) -> RateLimited:
    return RateLimited(kind, math.ceil(wait_s * 1000), headers)


class InProcessLimiter:
    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._tats: dict[tuple[str, str], float] = {}

    async def charge(self, subject: str, tokens: int) -> dict[str, str]:
        limits, now = self._policy.limits(subject), self._clock()
        wanted = (("requests", limits.rpm, 1), ("tokens", limits.tpm, tokens))
        charges = [(kind, limit, cost) for kind, limit, cost in wanted if limit is not None]
        results = {kind: _gcra(self._tats.get((subject, kind), now), now, limit, cost) for kind, limit, cost in charges}
        refused = [(kind, wait) for kind, (_, wait) in results.items() if wait > 0]
        if not refused:
            for kind, (tat, _) in results.items():
                self._tats[(subject, kind)] = tat
            self._forget(now)
        buckets = {kind: _bucket(self._tats.get((subject, kind), now), now, limit) for kind, limit, _ in charges}
        headers = _headers(buckets.get("requests"), buckets.get("tokens"))
        if refused:
            kind, wait = max(refused, key=lambda item: item[1])
            raise _refusal(kind, wait, headers)
        return headers

    async def correct(self, subject: str, tokens: int) -> None:
        limit = self._policy.limits(subject).tpm
        if limit is None or not tokens:
            return
        now = self._clock()
        tat = self._tats.get((subject, "tokens"), now)
        self._tats[(subject, "tokens")] = max(now, max(tat, now) + tokens * WINDOW_S / limit)

    def _forget(self, now: float) -> None:
        """Buckets full again hold nothing worth keeping."""
        if len(self._tats) > 10_000:
            self._tats = {key: tat for key, tat in self._tats.items() if tat > now}


# KEYS: requests bucket, tokens bucket. ARGV: rpm, tpm (0: none), token cost.
# Both limits are checked before either is charged, on Redis's own clock.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window = 60.0
local out = {}
local new = {}
local refused = 0
local waits = {0, 0}
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    local cost = (i == 1) and 1 or math.min(tonumber(ARGV[3]), limit)
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    local n = math.max(tat, now) + cost * window / limit
    if n - now - window > 1e-9 then
      refused = 1
      waits[i] = n - now - window
      new[i] = tat
    else
      new[i] = n
    end
  end
end
for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit > 0 then
    if refused == 0 then
      redis.call('SET', KEYS[i], tostring(new[i]), 'PX', math.ceil((new[i] - now) * 1000) + 1000)
    end
    out[i] = tostring(math.max(0, new[i] - now))
  else
    out[i] = '-1'
  end
end
return {refused, out[1], out[2], tostring(waits[1]), tostring(waits[2])}
"""

# KEYS: tokens bucket. ARGV: tpm, tokens (negative: a refund).
_CORRECT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local limit = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
local n = math.max(now, math.max(tat, now) + tonumber(ARGV[2]) * 60.0 / limit)
redis.call('SET', KEYS[1], tostring(n), 'PX', math.ceil((n - now) * 1000) + 1000)
return 1
"""


class RedisLimiter:
    def __init__(self, policy: Policy, url: str, *, prefix: str = "switchyard:limit:", timeout_s: float = 1.0) -> None:
        self._policy = policy
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._prefix = prefix
        self._charge = self._redis.register_script(_CHARGE)
        self._correct = self._redis.register_script(_CORRECT)

    async def charge(self, subject: str, tokens: int) -> dict[str, str]:
        limits = self._policy.limits(subject)
        keys = [f"{self._prefix}{subject}:requests", f"{self._prefix}{subject}:tokens"]
        try:
            refused, used_requests, used_tokens, wait_requests, wait_tokens = await self._charge(
                keys, [limits.rpm or 0, limits.tpm or 0, tokens]
            )
        except (RedisError, OSError):
            return {}  # limits fail open: an outage of the store must not stop the service
        buckets = {
            kind: _bucket(float(used), 0.0, limit)
            for kind, limit, used in (("requests", limits.rpm, used_requests), ("tokens", limits.tpm, used_tokens))
            if limit is not None
        }
        headers = _headers(buckets.get("requests"), buckets.get("tokens"))
        if int(refused):
            waits = {"requests": float(wait_requests), "tokens": float(wait_tokens)}
            kind = max(waits, key=lambda k: waits[k])
            raise _refusal(kind, waits[kind], headers)
        return headers

    async def correct(self, subject: str, tokens: int) -> None:
        limit = self._policy.limits(subject).tpm
        if limit is None or not tokens:
            return
        with contextlib.suppress(RedisError, OSError):  # else the charge made up front stands
            await self._correct([f"{self._prefix}{subject}:tokens"], [limit, tokens])

    async def aclose(self) -> None:
        await self._redis.aclose()


def build_limiter(settings: GatewaySettings) -> InProcessLimiter | RedisLimiter | None:
    """None when no limit is configured: no checks, no headers."""
    per_subject = {subject: Limits(own.rpm, own.tpm) for subject, own in settings.rate_limits.items()}
    default = Limits(settings.rate_limit_rpm, settings.rate_limit_tpm)
    if default == Limits(None, None) and not per_subject:
        return None
    policy = Policy(default, per_subject)
    return RedisLimiter(policy, settings.redis_url) if settings.redis_url else InProcessLimiter(policy)
