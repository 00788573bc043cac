"""The proxy's small parts (an engine's Retry-After, where the last whole SSE event ends), and
what it does through the gateway in process: a stream open at its deadline ends with an error
event, and an engine's 400s are the request's fault, never its replica's."""

import json
import time

import pytest
from starlette.types import Receive, Scope, Send

from app.pipeline.proxy import _events_end, retry_after_s
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import MODEL
from harness.inprocess import counting_engines, gateway_in_process, pool_settings


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
