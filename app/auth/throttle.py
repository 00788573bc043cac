"""A token bucket per caller, for endpoints that must not be hammered (the token endpoint)."""

from collections import OrderedDict

__all__ = ["Throttle"]


class Throttle:
    def __init__(self, rate_per_s: float, burst: int, *, max_callers: int = 10_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max_callers = max_callers
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def wait_s(self, caller: str, now: float) -> float:
        """0 when `caller` may go now (and it is counted), else how long until it may."""
        tokens, at = self._buckets.pop(caller, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self._rate
        self._buckets[caller] = (tokens - 1 if wait == 0 else tokens, now)
        if len(self._buckets) > self._max_callers:
            self._buckets.popitem(last=False)  # the longest quiet: a full bucket again anyway
        return wait
