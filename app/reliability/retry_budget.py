"""A retry budget: retries may add at most a fraction of the traffic, so that when every
replica is failing, retries do not multiply the load on them (a retry storm).

Counts live in one-second buckets over a sliding window; time is an argument.
"""

from collections import deque
from dataclasses import dataclass

__all__ = ["RetryBudget"]


@dataclass(slots=True)
class _Bucket:
    second: int
    requests: int = 0
    retries: int = 0


class RetryBudget:
    """Retries in the last `window_s` stay within `ratio` * requests + `minimum`
    (the minimum lets a quiet gateway still retry its few requests)."""

    def __init__(self, ratio: float = 0.1, *, window_s: int = 10, minimum: int = 3) -> None:
        self.ratio = ratio
        self.window_s = window_s
        self.minimum = minimum
        self._buckets: deque[_Bucket] = deque()

    def record_request(self, now: float) -> None:
        self._bucket(now).requests += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget if there is one left."""
        bucket = self._bucket(now)
        requests = sum(b.requests for b in self._buckets)
        retries = sum(b.retries for b in self._buckets)
        if retries >= self.ratio * requests + self.minimum:
            return False
        bucket.retries += 1
        return True

    def _bucket(self, now: float) -> _Bucket:
        second = int(now)
        while self._buckets and self._buckets[0].second <= second - self.window_s:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1].second != second:
            self._buckets.append(_Bucket(second))
        return self._buckets[-1]
