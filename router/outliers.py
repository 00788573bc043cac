"""Passive outlier detection: a circuit breaker per replica, fed by the outcome of each request.

closed ──5 consecutive failures──▶ open (ejected for 30 s * times ejected, at most 300 s)
open ──ejection over──▶ half-open: one trial request or health probe decides
half-open ──success──▶ closed        half-open ──failure──▶ open again, for longer

Failures are connect errors, timeouts, 5xx other than 503, and failed health probes. An engine that answers 429 or
503 is alive and shedding load (admission control), which says nothing against it. No more
than half of a pool is ever ejected, so a fault that hits every replica (a poison request,
the network of the gateway itself) cannot empty a pool.
"""

import enum
import math
from collections.abc import Collection
from dataclasses import dataclass

__all__ = ["BreakerState", "Outcome", "OutlierDetector", "OutlierPolicy"]


class Outcome(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    REJECTED = "rejected"  # 429/503: alive but busy; neither a failure nor a success for counting
    ABANDONED = "abandoned"  # the client went away before the replica showed either way


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class OutlierPolicy:
    consecutive_failures: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejected_fraction: float = 0.5

    def ejection_s(self, times_ejected: int) -> float:
        return min(self.base_ejection_s * times_ejected, self.max_ejection_s)

    def max_ejected(self, pool_size: int) -> int:
        return math.floor(pool_size * self.max_ejected_fraction + 1e-9)


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    times_ejected: int = 0
    ejected_until: float | None = None
    trial_in_flight: bool = False
    closed_since: float = 0.0


class OutlierDetector:
    """Breakers keyed by replica name. Time is an argument: `now` from a monotonic clock."""

    def __init__(self, policy: OutlierPolicy | None = None) -> None:
        self.policy = policy or OutlierPolicy()
        self._breakers: dict[str, _Breaker] = {}
        self._tripped: set[str] = set()  # breaker open or half-open
        self._held: dict[str, float] = {}  # asked for time (an engine's Retry-After): until when
        # Names the routing fast path must ask `admits` about: tripped or held.
        self._watched: set[str] = set()

    @property
    def tripped(self) -> frozenset[str] | set[str]:
        """Replicas that `admits` must be asked about (read-only): tripped or held."""
        return self._watched

    def hold(self, name: str, until: float) -> None:
        """Send `name` no new requests before `until` (it answered 429/503 with Retry-After)."""
        self._held[name] = max(until, self._held.get(name, until))
        self._watched.add(name)

    def state(self, name: str, now: float) -> BreakerState:
        breaker = self._breakers.get(name)
        if breaker is None or breaker.ejected_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < breaker.ejected_until else BreakerState.HALF_OPEN

    def admits(self, name: str, now: float) -> bool:
        """Not held, and closed or half-open with no trial request out yet."""
        if name not in self._watched:
            return True
        until = self._held.get(name)
        if until is not None:
            if now < until:
                return False
            del self._held[name]
            if name not in self._tripped:
                self._watched.discard(name)
        if name not in self._tripped:
            return True
        breaker = self._breakers[name]
        return breaker.ejected_until is not None and now >= breaker.ejected_until and not breaker.trial_in_flight

    def begin(self, name: str, now: float) -> bool:
        """A request is about to go to `name`; True when it is the half-open trial."""
        if self.state(name, now) is not BreakerState.HALF_OPEN:
            return False
        self._breakers[name].trial_in_flight = True
        return True

    def record(self, name: str, outcome: Outcome, now: float, pool: Collection[str]) -> None:
        """The outcome of a request to `name`, one of the replicas in `pool`."""
        breaker = self._breakers.setdefault(name, _Breaker(closed_since=now))
        state = self.state(name, now)
        if state is BreakerState.OPEN:
            return  # answers to requests sent before the ejection change nothing
        half_open = state is BreakerState.HALF_OPEN
        breaker.trial_in_flight = False
        if outcome is Outcome.FAILURE:
            breaker.failures += 1
            if half_open or breaker.failures >= self.policy.consecutive_failures:
                self._eject(name, breaker, now, pool)
        elif outcome is Outcome.SUCCESS:
            breaker.failures = 0
            if half_open:
                self._close(name, breaker, now)
        elif outcome is Outcome.REJECTED and half_open:
            self._close(name, breaker, now)  # it answered: alive, if busy

    def probe(self, name: str, ok: bool, now: float, pool: Collection[str]) -> None:
        """An active health probe. A failed one counts as a failed request (a dead replica is
        ejected, and must then wait out its ejection); a passing one ends a half-open state."""
        if not ok:
            self.record(name, Outcome.FAILURE, now, pool)
        elif self.state(name, now) is BreakerState.HALF_OPEN:
            self._close(name, self._breakers[name], now)

    def ejected_until(self, name: str) -> float | None:
        breaker = self._breakers.get(name)
        return None if breaker is None else breaker.ejected_until

    def times_ejected(self, name: str) -> int:
        breaker = self._breakers.get(name)
        return 0 if breaker is None else breaker.times_ejected

    def forget(self, name: str) -> None:
        self._breakers.pop(name, None)
        self._held.pop(name, None)
        self._tripped.discard(name)
        self._watched.discard(name)

    def _eject(self, name: str, breaker: _Breaker, now: float, pool: Collection[str]) -> None:
        already_out = name in self._tripped
        if not already_out:
            ejected = sum(other in self._tripped for other in pool)
            if ejected + 1 > self.policy.max_ejected(len(pool)):
                return  # keep counting; it is ejected once others come back
        if breaker.ejected_until is None and now - breaker.closed_since >= self.policy.max_ejection_s:
            breaker.times_ejected = 0  # healthy for a long while: start the backoff over
        breaker.times_ejected += 1
        breaker.ejected_until = now + self.policy.ejection_s(breaker.times_ejected)
        breaker.trial_in_flight = False
        self._tripped.add(name)
        self._watched.add(name)

    def _close(self, name: str, breaker: _Breaker, now: float) -> None:
        breaker.failures = 0
        breaker.trial_in_flight = False
        breaker.ejected_until = None
        breaker.closed_since = now
        self._tripped.discard(name)
        if name not in self._held:
            self._watched.discard(name)
