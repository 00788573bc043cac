"""The idempotency invariant under crashes: an answer, once a client has it, never changes.

Two gateways share one Redis that keeps an append-only file; clients retry with their keys on
either gateway, as a client would after an error. Redis is SIGKILLed and restarted mid-run,
then a gateway is SIGKILLed. The counting engine gives every execution its own completion id,
so a second execution's answer cannot pass for the first.
"""

import json
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import Redis, ServerProcess, free_port

CHAT: dict[str, object] = {"model": "counting", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LEASE_S = 5.0  # the default


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(aof_dir=tmp_path)
    yield server
    server.stop()


@pytest.fixture
def engine(log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess("harness.counting_engine", ["--port", str(port)], port=port, log_dir=log_dir)
    yield server.wait_ready()
    server.stop()


def _gateway(engine: ServerProcess, redis: Redis, log_dir: Path) -> ServerProcess:
    env = {"SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url]}]), "SWITCHYARD_REDIS_URL": redis.url}
    port = free_port()
    return ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")


@pytest.fixture
def gateways(engine: ServerProcess, durable_redis: Redis, log_dir: Path) -> Iterator[list[ServerProcess]]:
    started = [_gateway(engine, durable_redis, log_dir) for _ in range(2)]
    for gateway in started:
        gateway.wait_ready()
    yield started
    for gateway in started:
        gateway.stop()


def _answer(gateway: ServerProcess, key: str, stream: bool) -> bytes | None:
    """The answer as the client holds it: a whole 200 body, or a stream that ended with [DONE]."""
    body = CHAT | {"stream": stream}
    try:
        response = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"idempotency-key": key})
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    if stream and not response.content.rstrip().endswith(b"data: [DONE]"):
        return None
    return response.content


class Clients:
    """Threads that each send keyed requests, retrying every failure with the same key on the
    other gateway, and record every answer they were given."""

    def __init__(self, gateways: list[ServerProcess], threads: int) -> None:
        self.gateways = gateways
        self.answers: defaultdict[tuple[str, bool], list[bytes]] = defaultdict(list)
        self.running = True
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _client(self, number: int) -> None:
        while self.running:
            key, stream = uuid.uuid4().hex, number % 2 == 1
            for attempt in range(200):
                answer = _answer(self.gateways[(number + attempt) % len(self.gateways)], key, stream)
                if answer is not None:
                    with self._lock:
                        self.answers[key, stream].append(answer)
                    break
                time.sleep(0.1)

    def stop(self) -> None:
        self.running = False
        for thread in self._threads:
            thread.join(60)


def test_acknowledged_answers_survive_a_redis_crash_and_restart(
    gateways: list[ServerProcess], durable_redis: Redis, engine: ServerProcess
) -> None:
    httpx.post(engine.url + "/control", json={"chunk_delay_s": 0.05}).raise_for_status()  # 0.2 s a request
    clients = Clients(gateways, threads=8)
    try:
        time.sleep(2)
        durable_redis.kill()  # requests are running on both gateways now
        time.sleep(0.5)
        # The crash is noticed: a new key cannot be claimed (the clients' requests in flight may
        # all be waiting to keep their answers, which they do once the store is back).
        refused = httpx.post(
            gateways[0].url + "/v1/chat/completions",
            json=CHAT | {"stream": False},
            headers={"idempotency-key": uuid.uuid4().hex},
            timeout=30,
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "idempotency_unavailable")
        time.sleep(1.0)
        durable_redis.start()
        time.sleep(3)
    finally:
        clients.stop()
    assert len(clients.answers) >= 20
    for (key, stream), answers in clients.answers.items():
        assert len(answers) == 1
        for gateway in gateways:  # every later request with the key gets that same answer
            assert _answer(gateway, key, stream) == answers[0], key


def test_a_dead_gateways_keys_free_within_the_lease(
    gateways: list[ServerProcess], engine: ServerProcess, log_dir: Path
) -> None:
    httpx.post(engine.url + "/control", json={"stall_s": 8}).raise_for_status()
    first, second = gateways
    key = uuid.uuid4().hex
    running = threading.Thread(target=_answer, args=(first, key, False))
    running.start()
    deadline = time.monotonic() + 10
    while httpx.get(engine.url + "/executions").json()["received"] == 0:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.05)
    first.stop(signal.SIGKILL)
    killed = time.monotonic()
    httpx.post(engine.url + "/control", json={}).raise_for_status()
    while True:
        response = httpx.post(
            second.url + "/v1/chat/completions", json=CHAT | {"stream": False}, headers={"idempotency-key": key}
        )
        if response.status_code != 409:
            break
        assert response.headers["retry-after"]
        time.sleep(0.2)
    freed_after = time.monotonic() - killed
    assert response.status_code == 200, response.text
    assert freed_after <= LEASE_S + 1.0
    running.join(10)
