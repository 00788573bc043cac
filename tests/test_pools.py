"""Two pools in two regions, each serving its own model, behind one gateway."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL, start_engine

SECOND = "second-model"


@pytest.fixture(scope="module")
def second_engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    server = start_engine(builtin_model, SECOND, log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def two_pool_gateway(engine: ServerProcess, second_engine: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    pools = [
        {"name": "north", "region": "north", "replicas": [engine.url]},
        {"name": "south", "region": "south", "replicas": [second_engine.url]},
    ]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_REGION": "north", "SWITCHYARD_HEALTH_INTERVAL_S": "0.2"}
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


def _chat(gateway: ServerProcess, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, timeout=30)


def test_models_are_the_union_of_the_pools(two_pool_gateway: ServerProcess) -> None:
    models = httpx.get(two_pool_gateway.url + "/v1/models").json()["data"]
    assert sorted(m["id"] for m in models) == sorted([MODEL, SECOND])


def test_each_model_goes_to_the_pool_that_serves_it(two_pool_gateway: ServerProcess) -> None:
    for model in (MODEL, SECOND):
        response = _chat(two_pool_gateway, model)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model


def test_status_reports_pools_and_health(two_pool_gateway: ServerProcess) -> None:
    status = httpx.get(two_pool_gateway.url + "/status").json()
    assert status["region"] == "north"
    assert [(p["name"], p["region"], p["healthy_replicas"]) for p in status["pools"]] == [
        ("north", "north", 1),
        ("south", "south", 1),
    ]
    assert all(r["rtt_ms"] is not None for p in status["pools"] for r in p["replicas"])


def test_a_dead_pool_leaves_the_other_serving(two_pool_gateway: ServerProcess, second_engine: ServerProcess) -> None:
    second_engine.stop()
    deadline = time.monotonic() + 5
    while httpx.get(two_pool_gateway.url + "/status").json()["pools"][1]["healthy_replicas"]:
        assert time.monotonic() < deadline, "the probe never noticed the dead engine"
        time.sleep(0.1)
    unavailable = _chat(two_pool_gateway, SECOND)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "engine_unavailable"
    assert _chat(two_pool_gateway, MODEL).status_code == 200
    assert [m["id"] for m in httpx.get(two_pool_gateway.url + "/v1/models").json()["data"]] == [MODEL]
    assert httpx.get(two_pool_gateway.url + "/ready").status_code == 200
