"""The retry budget: retries as a fraction of recent requests, plus a few for a quiet gateway."""

from app.reliability.retry_budget import RetryBudget


def test_retry_budget_allows_a_fraction_of_requests_plus_a_minimum() -> None:
    budget = RetryBudget(0.1, window_s=10, minimum=3)
    for _ in range(50):
        budget.record_request(100.0)
    granted = sum(budget.try_spend(100.5) for _ in range(20))
    assert granted == 3 + 5
    assert not budget.try_spend(105.0)
    assert budget.try_spend(111.0)  # the window moved on: old requests and retries forgotten


def test_retry_budget_lets_a_quiet_gateway_retry() -> None:
    budget = RetryBudget(0.1, minimum=3)
    budget.record_request(0.0)
    assert [budget.try_spend(0.0) for _ in range(5)] == [True, True, True, True, False]  # 0.1 * 1 + 3
