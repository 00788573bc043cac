"""What the proxy (app/pipeline/proxy.py) reports to a replica's breaker: an engine's answer by
its status (outcome_of_status), and a client's own deadline, which is never the replica's fault
(through a gateway in process over two counting engines).

These belong in tests/unit/app/pipeline/test_proxy.py, with the proxy's other tests."""

import json
import time

import pytest

from app.pipeline.proxy import outcome_of_status
from harness.inprocess import counting_engines, gateway_in_process, pool_settings
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


async def test_a_clients_own_short_deadline_never_ejects_a_replica() -> None:
    """A deadline the client sets (the SDKs send their timeout as x-stainless-timeout) that
    passes before the engine answers is the request's, not the replica's: 504
    deadline_exceeded, and no breaker opens however many such requests a tenant sends."""
    urls = ["http://engine-a", "http://engine-b"]
    _, apps = counting_engines(urls)
    body = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    async with gateway_in_process(pool_settings(urls), apps) as gateway:
        client = gateway.client
        for i in range(20):
            header = "x-request-timeout" if i % 2 else "x-stainless-timeout"
            answer = await client.post(
                "/v1/chat/completions", json=body, headers={header: "0.000001", "x-session-id": str(i)}
            )
            assert answer.status_code == 504, answer.text
            assert answer.json()["error"]["code"] == "deadline_exceeded"
        status = (await client.get("/status")).json()
        breakers = [(r["id"], r["breaker"], r["times_ejected"]) for r in status["pools"][0]["replicas"]]
        assert breakers == [("p-0", "closed", 0), ("p-1", "closed", 0)]
        started = time.monotonic()
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert time.monotonic() - started < 5
