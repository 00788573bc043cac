"""Hybrid logical clocks: physical time when it moves forward, a counter when it does not.

Timestamps order the registry's audit log and break ties; they never decide membership.
A peer's timestamp further ahead of our physical clock than `max_drift_ms` is refused
(`ClockSkew`): adopting it would drag every later local timestamp along with it.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ClockSkew", "HybridClock", "Timestamp"]


class ClockSkew(ValueError):
    """A peer's timestamp is too far ahead of this clock."""


@dataclass(frozen=True, order=True, slots=True)
class Timestamp:
    wall_ms: int
    logical: int = 0
    region: str = ""  # the last tie-break: two regions never share a timestamp

    def encode(self) -> list[int | str]:
        return [self.wall_ms, self.logical, self.region]


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridClock:
    def __init__(self, region: str, *, max_drift_ms: int = 60_000, physical: Callable[[], int] = _now_ms) -> None:
        self.region = region
        self.max_drift_ms = max_drift_ms
        self._physical = physical
        self._last = Timestamp(0, 0, region)

    @property
    def last(self) -> Timestamp:
        return self._last

    def now(self) -> Timestamp:
        """A timestamp later than every one this clock has issued or observed."""
        wall = self._physical()
        if wall > self._last.wall_ms:
            self._last = Timestamp(wall, 0, self.region)
        else:
            self._last = Timestamp(self._last.wall_ms, self._last.logical + 1, self.region)
        return self._last

    def check(self, remote: Timestamp) -> None:
        """Refuse a timestamp too far in the future."""
        ahead = remote.wall_ms - self._physical()
        if ahead > self.max_drift_ms:
            raise ClockSkew(f"a timestamp from {remote.region!r} is {ahead} ms ahead (at most {self.max_drift_ms})")

    def observe(self, remote: Timestamp) -> None:
        """Move past a peer's timestamp (after `check`), so what happens next here sorts after it."""
        self.check(remote)
        if (remote.wall_ms, remote.logical) > (self._last.wall_ms, self._last.logical):
            self._last = Timestamp(remote.wall_ms, remote.logical, self.region)
