"""The proxy's small parts (an engine's Retry-After, where the last whole SSE event ends, what an
engine's answer tells the replica's breaker), and what it does through the gateway in process:
a stream open at its deadline ends with an error event, and neither an engine's 400s nor a
client's own short deadline are ever its replica's fault."""

import json
import time

import pytest
from starlette.types import Receive, Scope, Send

from app.pipeline.proxy import _events_end, outcome_of_status, retry_after_s
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import MODEL
from harness.inprocess import counting_engines, gateway_in_process, pool_settings
from protocol import SEQUENCE_FAILED, error_payload
from router import Outcome


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


async def test_a_stream_open_at_its_deadline_ends_with_an_error_event() -> None:
    engines, apps = counting_engines(["http://engine-0", "http://engine-1"])
    for engine in engines.values():
        engine.behave(chunks=100, chunk_delay_s=0.05)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with gateway_in_process(pool_settings(list(apps)), apps) as gateway:
        started = time.monotonic()
        response = await gateway.client.post("/v1/chat/completions", json=body, headers={"x-request-timeout": "1"})
        elapsed = time.monotonic() - started
    events = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert elapsed < 2.0
    assert 5 < len(events) < 100
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"


URL = "http://engine"


async def test_an_engine_answering_400_is_never_ejected() -> None:
    """Past the breaker's threshold many times over, one at a time (no other traffic between
    them to reset its count): 4xx answers are the request's fault, not the replica's."""
    engine_app, reached = create_engine_app(FakeEngine()), 0

    async def engine(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal reached
        reached += scope.get("path") == "/v1/completions"
        await engine_app(scope, receive, send)

    body = {"model": "fake-model", "user": "mallory", "max_tokens": 4, "prompt": [99_999_999]}  # past its vocabulary
    settings = pool_settings([URL], max_ejected_fraction=1.0)  # its one replica may be ejected
    async with gateway_in_process(settings, {URL: engine}) as gateway:
        for _ in range(40):
            answer = await gateway.client.post("/v1/completions", json=body)
            assert answer.status_code == 400
            assert answer.json()["error"]["param"] == "prompt"
        status = (await gateway.client.get("/status")).json()
    assert reached == 40  # each refused by the engine, not at the gateway's edge
    [replica] = status["pools"][0]["replicas"]
    assert (replica["breaker"], replica["times_ejected"]) == ("closed", 0)


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
