"""Our engine keeps answering while it generates: decoding runs off its event loop."""

import time

import httpx

from harness.scrape import scrape
from harness.servers import ServerProcess
from tests.conftest import MODEL


def _running(engine: ServerProcess) -> float:
    return sum(v for (name, _), v in scrape(engine.url).items() if name == "vllm:num_requests_running")


def test_generation_does_not_block_the_engine_event_loop(engine: ServerProcess) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 1500}
    chat |= {"temperature": 1.0, "seed": 7, "stream": True}
    with httpx.stream("POST", engine.url + "/v1/chat/completions", json=chat, timeout=60) as response:
        lines = response.iter_lines()
        next(line for line in lines if '"content":"' in line and '"role"' not in line)  # tokens are flowing
        assert _running(engine) == 1
        for _ in range(10):
            started = time.monotonic()
            assert httpx.get(engine.url + "/health", timeout=5).status_code == 200
            # A blocked loop would answer after the whole generation (seconds); sharing two cores
            # and the GIL with the decode thread costs tens of milliseconds.
            assert time.monotonic() - started < 0.5, "health checks wait behind generation"
    deadline = time.monotonic() + 1.0
    while _running(engine):
        assert time.monotonic() < deadline, "the engine still generates after its client left"
        time.sleep(0.02)
