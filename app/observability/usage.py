"""Who used the gateway, minute by minute, and how the SLOs are burning: what the console's
usage page shows without a Prometheus to ask.

Each API request's answer is counted for its tenant (the token's subject) in the minute it
ended: requests, tokens (the usage the engine reported, else the events a stream relayed),
errors (4xx and 5xx that are not sheds) and sheds (429 and 503: refused to protect the
engines). Beside them, the SLIs of dashboards/rules/slo.rules.yml for all tenants together:
answers and 5xx answers, streams and streams slower than 1 s to their first event.

A day of minutes is kept. A minute holds at most `max_tenants` tenants; later ones in that
minute are counted together as `(others)`, so a flood of subjects cannot grow it without
bound. The ledger is this process's: with several workers (Redis configured), each flushes
its minutes to Redis and the page reads their sum (RedisUsage).
"""

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, unquote

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "COUNTERS",
    "OTHERS",
    "SLOS",
    "Minute",
    "Slo",
    "LocalUsage",
    "RedisUsage",
    "UsageLedger",
    "UsageReports",
    "UsageSource",
    "UsageUnavailable",
    "burn_rates",
    "minute_of",
    "report",
    "status_kind",
]

log = logging.getLogger(__name__)

MINUTE_S = 60
RETENTION_MINUTES = 24 * 60
TOP_TENANTS = 20  # tenants a report names; the rest are summed
COUNTERS = ("requests", "tokens", "errors", "shed")
SLI_COUNTERS = ("answers", "answers_5xx", "streams", "streams_slow")
OTHERS = "(others)"
SLOW_FIRST_TOKEN_S = 1.0
WINDOWS = {"5m": 5, "1h": 60, "6h": 360, "1d": 1440}


@dataclass(frozen=True, slots=True)
class Slo:
    name: str
    description: str
    objective: float  # the share of good events
    bad: str  # the SLI counter of bad events
    total: str  # ... and of all events

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 6)


# The objectives of dashboards/rules/slo.rules.yml (tests hold the two together).
SLOS = (
    Slo("availability", "API requests answered without a 5xx", 0.999, "answers_5xx", "answers"),
    Slo("time to first token", "streams that start within 1 s", 0.99, "streams_slow", "streams"),
)


class UsageSource(Protocol):
    """Where the usage page's minutes come from: this process, or every process through Redis."""

    async def minutes(self, tenants_since: int, sli_since: int) -> dict[int, "Minute"]:
        """The minutes from `sli_since` on, with their tenants' counts from `tenants_since` on."""
        ...


def minute_of(at: float) -> int:
    return int(at // MINUTE_S)


def status_kind(status: int) -> str | None:
    """Which counter an answer's status adds to besides `requests`: `shed`, `errors` or none."""
    if status in (429, 503):
        return "shed"
    return "errors" if status >= 400 else None


@dataclass
class Minute:
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    sli: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SLI_COUNTERS, 0))

    def add(self, tenant: str, counter: str, amount: int) -> None:
        counts = self.tenants.setdefault(tenant, dict.fromkeys(COUNTERS, 0))
        counts[counter] += amount


class UsageLedger:
    def __init__(self, *, max_tenants: int = 100, retention_minutes: int = RETENTION_MINUTES) -> None:
        self._max_tenants = max_tenants
        self._retention = retention_minutes
        self._minutes: dict[int, Minute] = {}

    def record(
        self, tenant: str | None, status: int, tokens: int | None, first_token_s: float | None, now: float
    ) -> None:
        """One API request's answer: its tenant (None: authentication is off), status, tokens,
        and how long a stream took to its first event (None: not a stream, or no event)."""
        minute = self._minute(minute_of(now))
        name = tenant or "(anonymous)"
        if name not in minute.tenants and len(minute.tenants) >= self._max_tenants:
            name = OTHERS
        minute.add(name, "requests", 1)
        if tokens:
            minute.add(name, "tokens", tokens)
        if (kind := status_kind(status)) is not None:
            minute.add(name, kind, 1)
        minute.sli["answers"] += 1
        minute.sli["answers_5xx"] += status >= 500
        if first_token_s is not None:
            minute.sli["streams"] += 1
            minute.sli["streams_slow"] += first_token_s > SLOW_FIRST_TOKEN_S

    def _minute(self, number: int) -> Minute:
        minute = self._minutes.get(number)
        if minute is None:  # once a minute (or for a minute a failed flush gives back): forget the oldest
            minute = self._minutes[number] = Minute()
            for old in [kept for kept in self._minutes if kept <= number - self._retention]:
                del self._minutes[old]
        return minute

    def minutes(self, since: int) -> dict[int, Minute]:
        """The kept minutes from minute `since` on."""
        return {number: minute for number, minute in self._minutes.items() if number >= since}

    def take(self) -> dict[int, Minute]:
        """Every kept minute, forgotten here (a worker flushing them to Redis)."""
        minutes, self._minutes = self._minutes, {}
        return minutes

    def restore(self, minutes: dict[int, Minute]) -> None:
        """Counts taken but not flushed, added back (to go with the next flush)."""
        for number, minute in sorted(minutes.items()):
            _merged(self._minute(number), minute)


def report(minutes: dict[int, Minute], span_minutes: int, now: float, *, top: int = TOP_TENANTS) -> dict[str, Any]:
    """The usage page's data: the `top` tenants by requests (the rest summed as `(others)`),
    per minute over the last `span_minutes`, and the SLOs."""
    last = minute_of(now)
    axis = list(range(last - span_minutes + 1, last + 1))
    totals: dict[str, int] = {}
    for number in axis:
        for tenant, counts in minutes[number].tenants.items() if number in minutes else ():
            totals[tenant] = totals.get(tenant, 0) + counts["requests"]
    shown = set(sorted(totals, key=lambda tenant: (-totals[tenant], tenant))[:top])
    tenants: dict[str, dict[str, list[int]]] = {}
    for index, number in enumerate(axis):
        for tenant, counts in minutes[number].tenants.items() if number in minutes else ():
            name = tenant if tenant in shown else OTHERS
            series = tenants.setdefault(name, {counter: [0] * len(axis) for counter in COUNTERS})
            for counter, value in counts.items():
                series[counter][index] += value
    return {
        "minutes": [number * MINUTE_S for number in axis],
        "tenants": tenants,
        "slos": burn_rates(minutes, last),
    }


def burn_rates(minutes: dict[int, Minute], last: int) -> list[dict[str, Any]]:
    """Each SLO's bad ratio and burn rate (the ratio over the budget) over each window."""
    slos = []
    for slo in SLOS:
        windows = []
        for window, length in WINDOWS.items():
            bad = total = 0
            for number in range(last - length + 1, last + 1):
                sli = minutes[number].sli if number in minutes else None
                if sli is not None:
                    bad, total = bad + sli[slo.bad], total + sli[slo.total]
            ratio = bad / total if total else 0.0
            windows.append({"window": window, "events": total, "ratio": ratio, "burn_rate": ratio / slo.budget})
        slos.append({"name": slo.name, "description": slo.description, "objective": slo.objective,
                     "windows": windows})  # fmt: skip
    return slos


class LocalUsage:
    """This process's ledger, read as it is (one gateway process, no Redis)."""

    def __init__(self, ledger: UsageLedger) -> None:
        self._ledger = ledger

    async def __aenter__(self) -> "LocalUsage":
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    async def minutes(self, tenants_since: int, sli_since: int) -> dict[int, Minute]:
        """The ledger's minutes; the last two copied, as answers may still be adding to them."""
        current = minute_of(time.time())
        return {
            number: _merged(Minute(), minute) if number >= current - 1 else minute
            for number, minute in self._ledger.minutes(sli_since).items()
        }


class RedisUsage:
    """Every worker and gateway of a region: each flushes its ledger's minutes into Redis
    (two hashes a minute, tenants' and SLIs', summed with HINCRBY, kept a day) every
    `interval_s` and before a read; a read sums what all of them flushed, tenants over the
    report's span only. Counts that Redis refused wait for the next flush."""

    def __init__(self, ledger: UsageLedger, url: str, *, interval_s: float = 5.0, prefix: str = "switchyard:usage:"):
        self._ledger = ledger
        self._redis = aioredis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                             decode_responses=True)  # fmt: skip
        self._interval_s = interval_s
        self._prefix = prefix
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "RedisUsage":
        self._task = asyncio.create_task(self._flushing(), name="usage-flush")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            await self.flush()
        await self._redis.aclose()

    async def _flushing(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("usage counts wait for Redis: %s", exc)

    async def flush(self) -> None:
        minutes = self._ledger.take()
        if not minutes:
            return
        pipe = self._redis.pipeline(transaction=False)
        kept_s = (RETENTION_MINUTES + 60) * MINUTE_S
        for number, minute in minutes.items():
            tenants_key, sli_key = self._keys(number)
            for tenant, counts in minute.tenants.items():
                for counter, value in counts.items():
                    if value:  # the tenant's name percent-encoded: no name can forge another's field
                        pipe.hincrby(tenants_key, f"{quote(tenant, safe='')} {counter}", value)
            for counter, value in minute.sli.items():
                if value:
                    pipe.hincrby(sli_key, counter, value)
            pipe.expire(tenants_key, kept_s)
            pipe.expire(sli_key, kept_s)
        try:
            await pipe.execute()
        except (RedisError, OSError):
            self._ledger.restore(minutes)
            raise

    def _keys(self, number: int) -> tuple[str, str]:
        """A minute's tenants' hash and its SLIs' (small, read for every window of a day)."""
        return f"{self._prefix}{number}", f"{self._prefix}sli:{number}"

    async def minutes(self, tenants_since: int, sli_since: int) -> dict[int, Minute]:
        with contextlib.suppress(RedisError, OSError):
            await self.flush()  # this process's latest counts too
        last = minute_of(time.time())
        pipe = self._redis.pipeline(transaction=False)
        for number in range(sli_since, last + 1):
            pipe.hgetall(self._keys(number)[1])
        for number in range(tenants_since, last + 1):
            pipe.hgetall(self._keys(number)[0])
        try:
            hashes = iter(await pipe.execute())
        except (RedisError, OSError) as exc:
            raise UsageUnavailable(f"Redis: {exc}") from None
        found: dict[int, Minute] = {}
        for number in range(sli_since, last + 1):
            for counter, value in next(hashes).items():
                if counter in SLI_COUNTERS:
                    found.setdefault(number, Minute()).sli[counter] += int(value)
        for number in range(tenants_since, last + 1):
            for name, value in next(hashes).items():
                tenant, _, counter = name.rpartition(" ")
                if counter in COUNTERS:
                    found.setdefault(number, Minute()).add(unquote(tenant), counter, int(value))
        for number, minute in self._ledger.minutes(sli_since).items():  # what Redis has not taken yet
            found[number] = _merged(found.get(number, Minute()), minute)
        return found


class UsageReports:
    """Reports made off the event loop (a day of a busy region is a second of work), one at a
    time, and kept 5 s: the console polls every 5 s, and tabs add up."""

    def __init__(self, source: UsageSource, *, keep_s: float = 5.0) -> None:
        self._source = source
        self._keep_s = keep_s
        self._lock = asyncio.Lock()
        self._made: dict[int, tuple[float, dict[str, Any]]] = {}

    async def report(self, span_minutes: int) -> dict[str, Any]:
        async with self._lock:
            made = self._made.get(span_minutes)
            if made is not None and time.monotonic() - made[0] < self._keep_s:
                return made[1]
            now = time.time()
            last = minute_of(now)
            minutes = await self._source.minutes(last - span_minutes + 1, last - RETENTION_MINUTES + 1)
            data = await asyncio.to_thread(report, minutes, span_minutes, now)
            self._made = {span_minutes: (time.monotonic(), data)}
            return data


class UsageUnavailable(Exception):
    """The usage counts cannot be read (Redis unreachable)."""


def _merged(into: Minute, extra: Minute) -> Minute:
    for tenant, counts in extra.tenants.items():
        for counter, value in counts.items():
            into.add(tenant, counter, value)
    for counter, value in extra.sli.items():
        into.sli[counter] += value
    return into
