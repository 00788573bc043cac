"""The load bound of consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018).

A replica takes a new request only while its load is below ceil(c * mean), where the mean
counts the request being placed: (total + 1) / replicas. With c ≥ 1 some replica is always
below the bound, and after the placement no replica is above it.
"""

from fractions import Fraction

__all__ = ["DEFAULT_LOAD_FACTOR", "LoadBound"]

DEFAULT_LOAD_FACTOR = 1.25


class LoadBound:
    """ceil(c * (total + 1) / replicas) in integers, so no float rounding moves the bound."""

    __slots__ = ("_den", "_num", "factor")

    def __init__(self, factor: float = DEFAULT_LOAD_FACTOR) -> None:
        if factor < 1:
            raise ValueError("the load factor c must be at least 1")
        self.factor = factor
        exact = Fraction(factor).limit_denominator(10_000)
        self._num, self._den = exact.numerator, exact.denominator

    def __call__(self, total_load: int, replicas: int) -> int:
        return -(-self._num * (total_load + 1) // (self._den * replicas))
