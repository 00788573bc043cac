"""Which regions to try, nearest first: the gateway's own, then others by round-trip time.

Round-trip times are an exponentially weighted moving average of health-probe samples;
static latencies, when configured, take their place (tests, or links known to be slow).
"""

from collections.abc import Iterable, Mapping

__all__ = ["RegionOrder"]


class RegionOrder:
    def __init__(self, own: str, static_ms: Mapping[str, float] | None = None, alpha: float = 0.3) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.own = own
        self._static = dict(static_ms or {})
        self._alpha = alpha
        self._ewma: dict[str, float] = {}
        self._ranked: dict[frozenset[str], list[str]] = {}

    def observe(self, region: str, rtt_ms: float) -> None:
        """One round-trip sample to a replica in `region`."""
        previous = self._ewma.get(region)
        value = rtt_ms if previous is None else previous + self._alpha * (rtt_ms - previous)
        self._ewma[region] = value
        if previous is None or round(previous, 1) != round(value, 1):
            self._ranked.clear()

    def latency_ms(self, region: str) -> float | None:
        return self._static.get(region, self._ewma.get(region))

    def rank(self, regions: Iterable[str]) -> list[str]:
        """`regions` nearest first; unmeasured ones after measured ones, by name."""
        wanted = frozenset(regions)
        ranked = self._ranked.get(wanted)
        if ranked is None:
            ranked = sorted(wanted, key=self._sort_key)
            self._ranked[wanted] = ranked
        return ranked

    def _sort_key(self, region: str) -> tuple[bool, float, str]:
        latency = self.latency_ms(region)
        return region != self.own, float("inf") if latency is None else latency, region
