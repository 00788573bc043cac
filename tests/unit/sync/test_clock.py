"""Hybrid logical clocks: a peer's timestamp too far ahead is refused and moves nothing; the
clock moves past the others."""

import pytest

from sync.clock import ClockSkew, HybridClock, Timestamp


def test_the_clock_refuses_a_peer_far_in_the_future_and_moves_past_the_others() -> None:
    now = [10_000]
    clock = HybridClock("a", max_drift_ms=1_000, physical=lambda: now[0])
    first = clock.now()
    clock.observe(Timestamp(10_500, 3, "b"))
    assert clock.now() > Timestamp(10_500, 3, "b") > first
    with pytest.raises(ClockSkew):
        clock.observe(Timestamp(11_001, 0, "b"))
    assert clock.now().wall_ms == 10_500  # a refused timestamp moved nothing
