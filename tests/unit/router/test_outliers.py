"""Outlier ejection: the breaker of each replica, step by step, with time passed in."""

import pytest

from router import BreakerState, Outcome, OutlierDetector, OutlierPolicy

POOL = ["a", "b", "c", "d"]


def _fail(detector: OutlierDetector, name: str, times: int, now: float, pool: list[str] = POOL) -> None:
    for _ in range(times):
        detector.record(name, Outcome.FAILURE, now, pool)


def test_five_consecutive_failures_eject_for_thirty_seconds() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 4, now=0.0)
    assert detector.state("a", 0.0) is BreakerState.CLOSED
    _fail(detector, "a", 1, now=1.0)
    assert detector.state("a", 1.0) is BreakerState.OPEN
    assert not detector.admits("a", 30.9)
    assert detector.state("a", 31.0) is BreakerState.HALF_OPEN


def test_a_success_resets_the_count() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 4, now=0.0)
    detector.record("a", Outcome.SUCCESS, 0.0, POOL)
    _fail(detector, "a", 4, now=0.0)
    assert detector.state("a", 0.0) is BreakerState.CLOSED


@pytest.mark.parametrize("outcome", [Outcome.REJECTED, Outcome.ABANDONED])
def test_admission_rejections_are_not_failures(outcome: Outcome) -> None:
    detector = OutlierDetector()
    for _ in range(20):
        detector.record("a", outcome, 0.0, POOL)
    assert detector.state("a", 0.0) is BreakerState.CLOSED
    _fail(detector, "a", 4, now=0.0)
    assert detector.state("a", 0.0) is BreakerState.CLOSED  # and they do not reset the count either
    _fail(detector, "a", 1, now=0.0)
    assert detector.state("a", 0.0) is BreakerState.OPEN


def test_half_open_lets_one_trial_through() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    assert detector.admits("a", 30.0)
    assert detector.begin("a", 30.0)  # the trial
    assert not detector.admits("a", 30.0)  # no second request while it runs
    detector.record("a", Outcome.SUCCESS, 30.5, POOL)
    assert detector.state("a", 30.5) is BreakerState.CLOSED
    assert detector.admits("a", 30.5)


def test_a_failed_trial_ejects_for_longer_up_to_the_cap() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    now, ejections = 0.0, [30.0]
    for _ in range(12):
        now = detector.ejected_until("a") or 0.0
        detector.begin("a", now)
        detector.record("a", Outcome.FAILURE, now, POOL)
        ejections.append((detector.ejected_until("a") or 0.0) - now)
    assert ejections[:4] == [30.0, 60.0, 90.0, 120.0]
    assert max(ejections) == 300.0
    assert detector.times_ejected("a") == 13


def test_an_abandoned_trial_gives_the_next_request_its_turn() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    detector.begin("a", 30.0)
    detector.record("a", Outcome.ABANDONED, 30.1, POOL)
    assert detector.state("a", 30.1) is BreakerState.HALF_OPEN
    assert detector.admits("a", 30.1)


def test_a_rejection_during_the_trial_shows_the_replica_is_alive() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    detector.begin("a", 30.0)
    detector.record("a", Outcome.REJECTED, 30.1, POOL)
    assert detector.state("a", 30.1) is BreakerState.CLOSED


def test_a_passing_health_probe_ends_half_open_but_not_an_ejection() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    detector.probe("a", True, 10.0, POOL)
    assert detector.state("a", 10.0) is BreakerState.OPEN
    detector.probe("a", True, 31.0, POOL)
    assert detector.state("a", 31.0) is BreakerState.CLOSED


def test_failed_health_probes_eject_and_keep_a_dead_replica_out_longer() -> None:
    detector = OutlierDetector()
    for second in range(5):
        detector.probe("a", False, float(second), POOL)
    assert detector.ejected_until("a") == 4.0 + 30.0
    detector.probe("a", False, 20.0, POOL)  # while open: changes nothing
    assert detector.ejected_until("a") == 34.0
    detector.probe("a", False, 34.0, POOL)  # the half-open probe fails: out for longer
    assert detector.ejected_until("a") == 34.0 + 60.0


def test_failures_while_open_change_nothing() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    _fail(detector, "a", 10, now=5.0)  # late answers to requests sent before the ejection
    assert (detector.ejected_until("a"), detector.times_ejected("a")) == (30.0, 1)


def test_never_more_than_half_a_pool_is_ejected() -> None:
    detector = OutlierDetector()
    for name in POOL:
        _fail(detector, name, 5, now=0.0)
    assert [detector.state(name, 0.0) for name in POOL].count(BreakerState.OPEN) == 2
    # Once one is back, the next one that keeps failing can go.
    detector.probe("a", True, 31.0, POOL)
    _fail(detector, "c", 1, now=31.0)
    assert detector.state("c", 31.0) is BreakerState.OPEN


def test_a_single_replica_pool_is_never_ejected() -> None:
    detector = OutlierDetector()
    _fail(detector, "solo", 50, now=0.0, pool=["solo"])
    assert detector.state("solo", 0.0) is BreakerState.CLOSED


def test_the_backoff_starts_over_after_a_long_healthy_spell() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    detector.probe("a", True, 30.0, POOL)
    _fail(detector, "a", 5, now=40.0)
    assert detector.ejected_until("a") == 40.0 + 60.0  # soon after: twice as long
    detector.probe("a", True, 100.0, POOL)
    _fail(detector, "a", 5, now=100.0 + 300.0)
    assert detector.ejected_until("a") == 400.0 + 30.0  # five healthy minutes later: from the start


def test_policy_is_configurable() -> None:
    detector = OutlierDetector(OutlierPolicy(consecutive_failures=2, base_ejection_s=1.0, max_ejection_s=2.0))
    _fail(detector, "a", 2, now=0.0)
    assert detector.ejected_until("a") == 1.0


def test_a_held_replica_is_skipped_until_its_time_is_up() -> None:
    detector = OutlierDetector()
    detector.hold("a", until=2.0)
    assert "a" in detector.tripped
    assert not detector.admits("a", 1.9)
    assert detector.admits("a", 2.0)
    assert "a" not in detector.tripped  # forgotten once over
    assert detector.state("a", 2.0) is BreakerState.CLOSED


def test_a_hold_and_an_ejection_are_independent() -> None:
    detector = OutlierDetector()
    _fail(detector, "a", 5, now=0.0)
    detector.hold("a", until=40.0)
    assert not detector.admits("a", 31.0)  # half-open by the breaker, but held
    assert detector.admits("a", 40.0)
    detector.probe("a", True, 41.0, POOL)
    assert "a" not in detector.tripped
