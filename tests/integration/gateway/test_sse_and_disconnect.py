"""Streaming as `curl -N` sees it, and a client that hangs up mid-stream."""

import json
import time

import httpx
import pytest

from harness.servers import ServerProcess
from tests.conftest import MODEL


def _chat(max_tokens: int, stream: bool) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": 7,
        "stream": stream,
    }


def _running(engine: ServerProcess) -> float:
    for line in httpx.get(engine.url + "/metrics").text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("the engine exports no vllm:num_requests_running")


def _wait_idle(engine: ServerProcess, within: float) -> float:
    """Seconds until the engine runs nothing; fails past `within`."""
    started = time.monotonic()
    while _running(engine) != 0:
        elapsed = time.monotonic() - started
        assert elapsed < within, f"the engine still generates {elapsed:.2f} s after the client left"
        time.sleep(0.02)
    return time.monotonic() - started


def test_sse_framing_and_unbuffered_delivery(gateway: ServerProcess) -> None:
    arrivals: list[float] = []
    raw = b""
    started = time.monotonic()
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=_chat(400, True), timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        for chunk in response.iter_raw():
            raw += chunk
            arrivals.extend([time.monotonic() - started] * chunk.count(b"\n\n"))
    events = raw.split(b"\n\n")
    assert events[-1] == b"", "the stream must end with a blank line"
    events = events[:-1]
    assert events[-1] == b"data: [DONE]"
    for event in events[:-1]:
        assert event.startswith(b"data: {"), event[:80]
        assert b"\n" not in event
        json.loads(event.removeprefix(b"data: "))
    assert len(events) > 20
    # Not buffered: the first event is out long before the stream ends.
    assert arrivals[0] < arrivals[-1] / 4, (arrivals[0], arrivals[-1])


def test_client_disconnect_mid_stream_stops_generation(gateway: ServerProcess, engine: ServerProcess) -> None:
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=_chat(1900, True), timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert _running(engine) == 1
    assert _wait_idle(engine, within=1.0) < 1.0


def test_client_disconnect_before_a_whole_answer_stops_generation(
    gateway: ServerProcess, engine: ServerProcess
) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.url + "/v1/chat/completions", json=_chat(1900, False), timeout=0.5)
    assert _wait_idle(engine, within=1.0) < 1.0
