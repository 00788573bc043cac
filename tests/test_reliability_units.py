"""Small parts of the retry path: deadlines, the retry budget, Retry-After, SSE event boundaries, request ids."""

import time

import pytest

from app.context import request_id
from app.errors import InvalidRequest
from app.pipeline.proxy import _events_end, retry_after_s
from app.reliability.deadlines import Deadline
from app.reliability.retry_budget import RetryBudget


def test_deadline_from_our_header_then_the_sdk_header_then_the_default() -> None:
    now = time.monotonic()
    ours = Deadline.from_headers({"x-request-timeout": "5", "x-stainless-timeout": "50"}, default_s=600, max_s=3600)
    sdk = Deadline.from_headers({"x-stainless-timeout": "50"}, default_s=600, max_s=3600)
    default = Deadline.from_headers({}, default_s=600, max_s=3600)
    capped = Deadline.from_headers({"x-request-timeout": "99999"}, default_s=600, max_s=3600)
    assert [round(d.at - now) for d in (ours, sdk, default, capped)] == [5, 50, 600, 3600]
    assert not ours.expired


@pytest.mark.parametrize("value", ["", "abc", "-3", "0", "nan", "inf", "-inf"])
def test_deadline_refuses_nonsense(value: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        Deadline.from_headers({"x-stainless-timeout": value}, default_s=600, max_s=3600)
    assert caught.value.param == "x-stainless-timeout"


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


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("0", 0.0), (None, None), ("soon", None), ("-1", None), ("99999", None)],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_s({} if value is None else {"retry-after": value}) == seconds


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"data: a", 0),
        (b"data: a\n\n", 9),
        (b"data: a\n\ndata: b", 9),
        (b"data: a\n\ndata: b\n\n", 18),
        (b"data: a\r\n\r\ndata: b", 11),
    ],
)
def test_sse_event_boundaries(data: bytes, end: int) -> None:
    assert _events_end(data) == end


@pytest.mark.parametrize("given", ["caf\u00e9", "", "x" * 129, "tab\there"])
def test_a_request_id_the_gateway_cannot_pass_on_as_it_is_gets_replaced(given: str) -> None:
    """Only visible ASCII goes back out and on to the engine: anything else is replaced."""
    headers = [(b"x-request-id", given.encode("latin-1"))]
    assert request_id(headers) != given
    assert request_id(headers).isascii()


def test_a_sane_request_id_is_kept() -> None:
    assert request_id([(b"x-request-id", b"req-42.a_b")]) == "req-42.a_b"
