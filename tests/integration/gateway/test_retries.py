"""Retries and failover under injected faults: three counting engines, each behind a fault
proxy, behind a real gateway. Every request carries its own x-request-id, so each engine's
count says how many times a request was executed."""

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.faultproxy import FaultProxy
from harness.servers import ServerProcess, free_port

MODEL = "counting"


class Replica:
    def __init__(self, log_dir: Path) -> None:
        port = free_port()
        self.engine = ServerProcess("harness.counting_engine", ["--port", str(port)], port=port, log_dir=log_dir)
        self.engine.wait_ready()
        self.proxy = FaultProxy(port)

    def control(self, **behaviour: object) -> None:
        httpx.post(self.engine.url + "/control", json=behaviour).raise_for_status()

    def counts(self) -> tuple[int, int]:
        """Requests received, and requests executed (answered), since the last `control`."""
        counts = httpx.get(self.engine.url + "/executions").json()
        return int(counts["received"]), int(counts["total"])

    def executed(self, request_id: str) -> int:
        return int(httpx.get(self.engine.url + "/executions").json()["by_id"].get(request_id, 0))


@pytest.fixture(scope="module")
def replicas(log_dir: Path) -> Iterator[list[Replica]]:
    started = [Replica(log_dir) for _ in range(3)]
    yield started
    for replica in started:
        replica.proxy.close()
        replica.engine.stop()


@pytest.fixture
def gateway(replicas: list[Replica], log_dir: Path) -> Iterator[ServerProcess]:
    """A fresh gateway per test (no breaker or health state carried over), engines reset."""
    for replica in replicas:
        replica.control()
        replica.proxy.set("pass")
    pools = [{"name": "p", "replicas": [r.proxy.url for r in replicas]}]
    env = {
        "SWITCHYARD_POOLS": json.dumps(pools),
        "SWITCHYARD_HEALTH_INTERVAL_S": "60",  # only the requests themselves tell the gateway
        "SWITCHYARD_ATTEMPT_TIMEOUT_S": "1.0",
        "SWITCHYARD_RETRY_BACKOFF_S": "0.01",
        "SWITCHYARD_RETRY_BACKOFF_MAX_S": "0.05",
    }
    port = free_port()
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


def _chat(
    gateway: ServerProcess, request_id: str, *, timeout_s: float | None = None, **fields: object
) -> httpx.Response:
    headers = {"x-request-id": request_id, "x-session-id": request_id}
    if timeout_s is not None:
        headers["x-request-timeout"] = str(timeout_s)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} | fields
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _executions(replicas: list[Replica], request_id: str) -> int:
    return sum(r.executed(request_id) for r in replicas)


@pytest.mark.parametrize("fault", ["down", "reset"])
def test_no_connection_is_served_by_another_replica(
    gateway: ServerProcess, replicas: list[Replica], fault: str
) -> None:
    replicas[0].proxy.set(fault)  # type: ignore[arg-type]
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = _chat(gateway, request_id)
        assert response.status_code == 200, response.text
        assert response.headers["x-route-replica"] != "p-0"
    assert [_executions(replicas, i) for i in ids] == [1] * len(ids)
    assert replicas[0].counts()[1] == 0
    if fault == "down":  # the operator hears of it once, whoever noticed first (a request or a probe)
        down = [line for line in gateway.output().splitlines() if "replica p-0 (" in line and "is down" in line]
        assert len(down) == 1, gateway.output()


def test_an_engine_503_is_served_by_another_replica_and_its_retry_after_kept(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    replicas[0].control(fail_status=503, fail_times=1000, retry_after=30)
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = _chat(gateway, request_id)
        assert response.status_code == 200, response.text
    assert [_executions(replicas, i) for i in ids] == [1] * len(ids)
    # Held for its Retry-After once it said 503: asked at most once in all.
    assert replicas[0].counts()[0] <= 1


def test_an_engine_answer_is_relayed_when_no_retry_is_left(gateway: ServerProcess, replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.control(fail_status=503, fail_times=1000, retry_after=2)
    response = _chat(gateway, uuid.uuid4().hex)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert sum(r.counts()[0] for r in replicas) == 3  # max_attempts, each on another replica


def test_a_failure_after_the_first_chunk_is_not_retried(gateway: ServerProcess, replicas: list[Replica]) -> None:
    for replica in replicas:
        replica.control(chunks=50, chunk_delay_s=0.01)
        replica.proxy.set("cut", cut_after=600)  # headers and a few events, then a reset
    request_id = uuid.uuid4().hex
    headers = {"x-request-id": request_id}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert any('"content":"tok0 "' in e for e in events)
    error = json.loads(events[-1].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_error"
    # In the operator's words, once; the client library's own words go to the log only.
    assert error["message"] == (
        "The stream was cut short: the engine closed the connection before the stream was complete. Retry the request."
    )
    assert "stream from p-" in gateway.output()
    assert _executions(replicas, request_id) == 1


def test_a_stalled_engine_times_out_per_attempt_and_the_next_replica_answers(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    replicas[0].proxy.set("stall")
    started = time.monotonic()
    routes = [_chat(gateway, uuid.uuid4().hex) for _ in range(6)]
    elapsed = time.monotonic() - started
    assert all(r.status_code == 200 for r in routes), [(r.status_code, r.text[:300]) for r in routes]
    assert all(r.headers["x-route-replica"] != "p-0" for r in routes)
    assert elapsed < 6 * 0.5 + 1.0 + 1.0  # at most one attempt timeout (1 s) in all: then it is ejected or held
    deadline = time.monotonic() + 5
    while replicas[0].proxy.stalled and time.monotonic() < deadline:
        time.sleep(0.05)
    assert replicas[0].proxy.stalled == 0  # the stalled attempt was cancelled, not left open


def test_when_every_engine_stalls_the_deadline_bounds_the_request(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    for replica in replicas:
        replica.proxy.set("stall")
    started = time.monotonic()
    response = _chat(gateway, uuid.uuid4().hex, timeout_s=2.5)
    elapsed = time.monotonic() - started
    assert response.status_code == 504
    assert response.json()["error"]["code"] in ("upstream_timeout", "deadline_exceeded")
    assert elapsed < 2.5 + 0.5


def test_a_stream_open_at_its_deadline_ends_with_an_error_event(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    for replica in replicas:
        replica.control(chunks=100, chunk_delay_s=0.05)
    headers = {"x-request-timeout": "1"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as stream:
        events = [line for line in stream.iter_lines() if line.startswith("data: ")]
    assert time.monotonic() - started < 2.0
    assert 5 < len(events) < 100
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "deadline_exceeded"


def test_when_every_engine_fails_retries_stay_within_the_budget(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    for replica in replicas:
        replica.control(fail_status=502, fail_times=10_000)
    requests = 40
    for _ in range(requests):
        assert _chat(gateway, uuid.uuid4().hex).status_code == 502
    sent = sum(r.counts()[0] for r in replicas)
    # Budget: 10 % of requests plus 3 per 10 s window; without it, 3 attempts each (120).
    assert requests <= sent <= requests + int(0.1 * requests) + 3


@pytest.mark.parametrize("value", ["soon", "-1", "0", "nan", "inf"])
def test_a_bad_timeout_header_is_refused(gateway: ServerProcess, value: str) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-request-timeout": value},
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-request-timeout"


def _predict(gateway: ServerProcess, request_id: str, **headers: str) -> httpx.Response:
    body = {"text": "hi", "max_tokens": 2}
    sent = {"x-request-id": request_id, "x-session-id": request_id, **headers}
    return httpx.post(gateway.url + "/predict", json=body, headers=sent, timeout=30)


@pytest.mark.parametrize("fault", ["down", "reset"])
def test_predict_fails_over_like_the_chat_route(gateway: ServerProcess, replicas: list[Replica], fault: str) -> None:
    """`/predict` runs the same pipeline: a replica that is down costs no request, the engine
    sees the request id, and the answer says where it was served (its trace: tests/test_tracing.py)."""
    replicas[0].proxy.set(fault)  # type: ignore[arg-type]
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = _predict(gateway, request_id)
        assert response.status_code == 200, response.text
        assert response.json()["text"] == "tok tok "
        assert response.json()["model"] == MODEL
        assert response.headers["x-request-id"] == request_id
        assert response.headers["x-route-replica"] != "p-0"
        assert response.headers["x-route-region"]
    assert [_executions(replicas, i) for i in ids] == [1] * len(ids)


def test_predict_answers_are_replayed_for_an_idempotency_key(gateway: ServerProcess, replicas: list[Replica]) -> None:
    request_id = uuid.uuid4().hex
    first = _predict(gateway, request_id, **{"idempotency-key": request_id})
    again = _predict(gateway, uuid.uuid4().hex, **{"idempotency-key": request_id})
    assert first.status_code == again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == request_id
    assert _executions(replicas, request_id) == 1


def test_predict_relays_the_engines_answer_when_no_retry_is_left(
    gateway: ServerProcess, replicas: list[Replica]
) -> None:
    for replica in replicas:
        replica.control(fail_status=503, fail_times=1000, retry_after=2)
    response = _predict(gateway, uuid.uuid4().hex)
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
    assert sum(r.counts()[0] for r in replicas) == 3  # retried on every replica, as chat is
