"""Idempotency keys through a real gateway, with a real Redis (started here, so it can be
stopped) and counting engines that record every execution."""

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import Redis, ServerProcess, free_port

MODEL = "counting"
CHAT: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def engine(log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    server = ServerProcess("harness.counting_engine", ["--port", str(port)], port=port, log_dir=log_dir)
    yield server.wait_ready()
    server.stop()


@pytest.fixture
def gateway(engine: ServerProcess, redis: Redis, log_dir: Path) -> Iterator[ServerProcess]:
    httpx.post(engine.url + "/control", json={}).raise_for_status()
    env = {"SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [engine.url]}]), "SWITCHYARD_REDIS_URL": redis.url}
    port = free_port()
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


def _executed(engine: ServerProcess) -> int:
    return int(httpx.get(engine.url + "/executions").json()["total"])


def _post(gateway: ServerProcess, key: str | None, body: dict[str, object] = CHAT, **headers: str) -> httpx.Response:
    sent = {"idempotency-key": key, **headers} if key is not None else dict(headers)
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=sent, timeout=30)


def test_a_retried_request_executes_once_and_replays_the_answer(gateway: ServerProcess, engine: ServerProcess) -> None:
    first = _post(gateway, '"order-1"')
    again = _post(gateway, '"order-1"')
    assert (first.status_code, again.status_code) == (200, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert _executed(engine) == 1


def test_fifty_concurrent_duplicates_execute_once(gateway: ServerProcess, engine: ServerProcess) -> None:
    httpx.post(engine.url + "/control", json={"chunk_delay_s": 0.1}).raise_for_status()  # 0.4 s per answer
    statuses: list[tuple[int, bool]] = []

    def send() -> None:
        response = _post(gateway, "dup-50")
        statuses.append((response.status_code, "idempotent-replayed" in response.headers))

    threads = [threading.Thread(target=send) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(statuses) == 50
    assert statuses.count((200, False)) == 1  # the one that ran
    assert all(s in ((200, False), (200, True), (409, False)) for s in statuses)
    assert _executed(engine) == 1


def test_a_duplicate_in_flight_gets_409_with_retry_after(gateway: ServerProcess, engine: ServerProcess) -> None:
    httpx.post(engine.url + "/control", json={"chunk_delay_s": 0.25}).raise_for_status()
    running = threading.Thread(target=_post, args=(gateway, "slow-1"))
    running.start()
    time.sleep(0.3)
    duplicate = _post(gateway, "slow-1")
    running.join(10)
    assert duplicate.status_code == 409
    assert duplicate.headers["retry-after"] == "1"
    assert duplicate.json()["error"]["code"] == "idempotency_key_in_use"


def test_the_same_key_with_another_body_is_422(gateway: ServerProcess) -> None:
    assert _post(gateway, "k-422").status_code == 200
    other = _post(gateway, "k-422", CHAT | {"max_tokens": 3})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Key order and spacing are not a different body.
    same = httpx.post(
        gateway.url + "/v1/chat/completions",
        content=b'{ "messages": [{"content": "hi", "role": "user"}], "model": "counting" }',
        headers={"idempotency-key": "k-422", "content-type": "application/json"},
    )
    assert same.headers.get("idempotent-replayed") == "true"


def test_tenants_do_not_share_keys(gateway: ServerProcess, engine: ServerProcess) -> None:
    alice = _post(gateway, "shared", CHAT | {"user": "alice"})
    bob = _post(gateway, "shared", CHAT | {"user": "bob"})
    assert (alice.status_code, bob.status_code) == (200, 200)
    assert "idempotent-replayed" not in bob.headers
    assert _executed(engine) == 2


def test_a_completed_stream_replays_byte_identical(gateway: ServerProcess, engine: ServerProcess) -> None:
    body = CHAT | {"stream": True, "max_tokens": 6}
    first = _post(gateway, "stream-1", body)
    again = _post(gateway, "stream-1", body)
    assert first.headers["content-type"].startswith("text/event-stream")
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert first.content.rstrip().endswith(b"data: [DONE]")
    assert _executed(engine) == 1


def test_a_failure_before_the_first_byte_releases_the_key(gateway: ServerProcess, engine: ServerProcess) -> None:
    httpx.post(engine.url + "/control", json={"fail_status": 503, "fail_times": 100}).raise_for_status()
    assert _post(gateway, "retry-me").status_code == 503
    httpx.post(engine.url + "/control", json={}).raise_for_status()
    after = _post(gateway, "retry-me")
    assert after.status_code == 200
    assert "idempotent-replayed" not in after.headers
    assert _executed(engine) == 1


@pytest.mark.parametrize("key", ["", '""', "has space", "x" * 256, "caf\u00e9"])
def test_a_malformed_key_is_400(gateway: ServerProcess, key: str) -> None:
    headers = httpx.Headers([(b"idempotency-key", key.encode("utf-8"))])
    response = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


def test_store_down_refuses_keyed_requests_and_lets_the_rest_through(
    gateway: ServerProcess, redis: Redis, engine: ServerProcess
) -> None:
    assert _post(gateway, "before").status_code == 200
    redis.stop()
    keyed = _post(gateway, "after")
    assert keyed.status_code == 503
    assert keyed.json()["error"]["code"] == "idempotency_unavailable"
    assert _post(gateway, None).status_code == 200
    assert _executed(engine) == 2
