"""SIGTERM with 20 streams open: each completes or ends with the shutdown event, none is cut
silently, new requests are turned away, and the gateway exits by itself with status 0."""

import json
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from harness.servers import ServerProcess, free_port

MODEL = "counting"
DRAIN_S = 2.0
CHUNK_DELAY_S = 0.1


def _read_stream(url: str, tokens: int, into: list[list[str]], opened: threading.Semaphore | None = None) -> None:
    """Read one stream's events into `into`; `opened` is released at its first event."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": tokens}
    events: list[str] = []
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(line)
                    if opened is not None and len(events) == 1:
                        opened.release()
    except httpx.HTTPError as exc:  # a cut connection is what this test must never see
        events.append(f"transport error: {exc!r}")
    into.append(events)


@contextmanager
def _draining_gateway(
    log_dir: Path, behaviour: Mapping[str, object], pool: Mapping[str, object], drain_s: float
) -> Iterator[ServerProcess]:
    """A counting engine told `behaviour`, behind a gateway that drains for `drain_s`."""
    engine_port, port = free_port(), free_port()
    engine = ServerProcess("harness.counting_engine", ["--port", str(engine_port)], port=engine_port, log_dir=log_dir)
    engine.wait_ready()
    gateway = None
    try:
        httpx.post(engine.url + "/control", json=behaviour).raise_for_status()
        env = {
            "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url], **pool}]),
            "SWITCHYARD_DRAIN_TIMEOUT_S": str(drain_s),
        }
        gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
        yield gateway.wait_ready()
    finally:
        if gateway is not None:
            gateway.stop()
        engine.stop()


def test_sigterm_drains_streams_then_exits_cleanly(log_dir: Path) -> None:
    short: list[list[str]] = []  # streams that finish within the drain budget
    long: list[list[str]] = []  # streams that outlive it
    with _draining_gateway(log_dir, {"chunk_delay_s": CHUNK_DELAY_S}, {}, DRAIN_S) as gateway:
        opened = threading.Semaphore(0)
        threads = [threading.Thread(target=_read_stream, args=(gateway.url, 8, short, opened)) for _ in range(10)]
        threads += [threading.Thread(target=_read_stream, args=(gateway.url, 200, long, opened)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for _ in threads:  # every stream open and under way, however busy the machine
            assert opened.acquire(timeout=20), "a stream never started"
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)

        assert httpx.get(gateway.url + "/ready").status_code == 503
        refused = httpx.post(
            gateway.url + "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
        )
        assert refused.status_code == 503
        assert refused.headers["connection"] == "close"
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "server_shutting_down"
        assert httpx.get(gateway.url + "/health").status_code == 200  # alive while it drains

        started = time.monotonic()
        assert gateway.process.wait(timeout=DRAIN_S + 10) == 0
        assert time.monotonic() - started < DRAIN_S + 5
        for thread in threads:
            thread.join(5)

    assert len(short) == len(long) == 10
    for events in short:
        assert events[-1] == "data: [DONE]", events[-3:]
        assert len(events) == 8 + 1
    for events in long:
        error = json.loads(events[-1].removeprefix("data: "))["error"]
        assert error["code"] == "server_shutting_down", events[-3:]
        assert 10 < len(events) < 200  # it ran during the drain, then was ended, not cut


def test_sigterm_answers_queued_requests_too(log_dir: Path) -> None:
    """One slot, requests of 1 s, a 1.5 s budget: the running one and the next finish; the
    one still waiting when the budget is spent gets 503, not a dropped connection."""
    results: dict[int, httpx.Response | str] = {}
    behaviour = {"chunks": 4, "chunk_delay_s": 0.25}
    with _draining_gateway(log_dir, behaviour, {"max_load": 1}, 1.5) as gateway:

        def send(i: int) -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}]}
            try:
                results[i] = httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)
            except httpx.HTTPError as exc:
                results[i] = repr(exc)

        threads = []
        for i in range(3):
            threads.append(threading.Thread(target=send, args=(i,)))
            threads[-1].start()
            time.sleep(0.1)  # in this order: one runs, two wait
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(timeout=15) == 0
        for thread in threads:
            thread.join(10)
    statuses = [r.status_code if isinstance(r, httpx.Response) else r for _, r in sorted(results.items())]
    assert statuses == [200, 200, 503]
    last = results[2]
    assert isinstance(last, httpx.Response)
    assert last.json()["error"]["code"] == "server_shutting_down"
