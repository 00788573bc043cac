"""The proxy's small parts (an engine's Retry-After, where the last whole SSE event ends), and
what it does through the gateway in process: a stream open at its deadline ends with an error
event."""

import json
import time

import pytest

from app.pipeline.proxy import _events_end, retry_after_s
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
