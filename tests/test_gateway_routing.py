"""How an engine's answer feeds its replica's breaker (app/pipeline/proxy.py's outcome_of_status).

These belong in tests/unit/app/pipeline/test_proxy.py, with the proxy's other small parts."""

import json

import pytest

from app.pipeline.proxy import outcome_of_status
from protocol import SEQUENCE_FAILED, error_payload
from router import Outcome


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (400, Outcome.SUCCESS),  # the client's fault, not the replica's
        (404, Outcome.SUCCESS),
        (429, Outcome.REJECTED),
        (503, Outcome.REJECTED),
        (500, Outcome.FAILURE),
        (502, Outcome.FAILURE),
        (504, Outcome.FAILURE),
    ],
)
def test_engine_answers_feed_the_breaker(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome


def test_a_500_the_engine_marks_as_one_requests_failure_never_counts() -> None:
    marked = json.dumps(error_payload("failed in this request's prefill", "server_error", code=SEQUENCE_FAILED))
    assert outcome_of_status(500, marked.encode()) is Outcome.SUCCESS
    assert outcome_of_status(500, b'{"error": {"code": "engine_error"}}') is Outcome.FAILURE
    assert outcome_of_status(401) is Outcome.FAILURE  # the engine refuses the gateway's key: nobody is served
