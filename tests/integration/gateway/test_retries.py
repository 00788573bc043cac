"""Retries and failover under faults only a TCP connection shows: three counting engines,
each behind a fault proxy, behind a real gateway. A connection reset before the answer is
retried on another replica; a stream cut after its first event is not. Every request carries
its own x-request-id, so each engine's count says how many times a request was executed.
(The gateway's other retry decisions, in process: tests/unit/app/pipeline/test_retries.py.)"""

import json
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


def _chat(gateway: ServerProcess, request_id: str) -> httpx.Response:
    headers = {"x-request-id": request_id, "x-session-id": request_id}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _executions(replicas: list[Replica], request_id: str) -> int:
    return sum(r.executed(request_id) for r in replicas)


def test_a_reset_connection_is_served_by_another_replica(gateway: ServerProcess, replicas: list[Replica]) -> None:
    replicas[0].proxy.set("reset")
    ids = [uuid.uuid4().hex for _ in range(12)]
    for request_id in ids:
        response = _chat(gateway, request_id)
        assert response.status_code == 200, response.text
        assert response.headers["x-route-replica"] != "p-0"
    assert [_executions(replicas, i) for i in ids] == [1] * len(ids)
    assert replicas[0].counts()[1] == 0


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


def _predict(gateway: ServerProcess, request_id: str) -> httpx.Response:
    body = {"text": "hi", "max_tokens": 2}
    sent = {"x-request-id": request_id, "x-session-id": request_id}
    return httpx.post(gateway.url + "/predict", json=body, headers=sent, timeout=30)


def test_predict_fails_over_a_reset_like_the_chat_route(gateway: ServerProcess, replicas: list[Replica]) -> None:
    """`/predict` runs the same pipeline: a replica that resets its connections costs no request."""
    replicas[0].proxy.set("reset")
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
