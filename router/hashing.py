"""A hash ring with virtual nodes over a stable hash.

The hash must give the same point in every process and every run, so that all gateway
workers (and a restarted one) send a key to the same replica: Python's `hash()` is salted
per process, so it is blake2b here.
"""

import bisect
import itertools
from collections.abc import Iterable, Iterator
from functools import lru_cache
from hashlib import blake2b

__all__ = ["DEFAULT_VNODES", "HashRing", "stable_hash"]

# 160 points per member keeps each member's share of the ring within about ±8 % of 1/N.
DEFAULT_VNODES = 160


def stable_hash(data: str) -> int:
    """A 64-bit point on the ring, the same in every process."""
    return int.from_bytes(blake2b(data.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Members placed at `vnodes` points each; a key belongs to the first point at or after its own."""

    __slots__ = ("_owners", "_points", "members", "vnodes")

    def __init__(self, members: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self.members: tuple[str, ...] = tuple(sorted(set(members)))
        # Ties between equal points (vanishingly rare) are broken by member name, so
        # the order never depends on insertion order.
        placed = sorted(itertools.chain.from_iterable(_points(member, vnodes) for member in self.members))
        self._points = [point for point, _ in placed]
        self._owners = [member for _, member in placed]

    def __len__(self) -> int:
        return len(self.members)

    def walk(self, point: int) -> Iterator[str]:
        """Every member once, in ring order from `point`: the first is the key's owner."""
        count = len(self._points)
        if not count:
            return
        start = bisect.bisect_left(self._points, point)
        seen: set[str] = set()
        wanted = len(self.members)
        for i in range(start, start + count):
            owner = self._owners[i % count]
            if owner not in seen:
                seen.add(owner)
                yield owner
                if len(seen) == wanted:
                    return

    def owner(self, point: int) -> str | None:
        return next(self.walk(point), None)


@lru_cache(maxsize=4096)
def _points(member: str, vnodes: int) -> tuple[tuple[int, str], ...]:
    """A member's points, sorted: hashed once, so a ring rebuilt as members come and go (pods
    found in DNS) only merges sorted runs (Timsort), instead of hashing every member again."""
    return tuple(sorted((stable_hash(f"{member}#{i}"), member) for i in range(vnodes)))
