"""The gateway's key to its engines: sent on every request to a pool that has one, and a
replica that refuses it is down (a configuration fault), never a client's 401."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL

KEY = "engine-key-for-tests"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def locked_engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    env = {"SWITCHYARD_ENGINE_API_KEY": KEY}
    server = ServerProcess("engines.transformers", args, port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


def _gateway(engine: ServerProcess, log_dir: Path, api_key: str | None) -> ServerProcess:
    pool: dict[str, object] = {"name": "locked", "replicas": [engine.url]}
    if api_key:
        pool["api_key"] = api_key
    env = {"SWITCHYARD_POOLS": json.dumps([pool]), "SWITCHYARD_HEALTH_INTERVAL_S": "0.5"}
    port = free_port()
    return ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env)


def test_the_pools_key_opens_the_engine(locked_engine: ServerProcess, log_dir: Path) -> None:
    assert httpx.post(locked_engine.url + "/v1/chat/completions", json=CHAT).status_code == 401
    gateway = _gateway(locked_engine, log_dir, KEY)
    gateway.wait_ready()
    try:
        for stream in (False, True):
            answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT | {"stream": stream}, timeout=30)
            assert answer.status_code == 200, answer.text
        assert MODEL in {card["id"] for card in httpx.get(gateway.url + "/v1/models").json()["data"]}
    finally:
        gateway.stop()


@pytest.mark.parametrize("api_key", [None, "a-wrong-key"])
def test_a_refused_key_is_the_operators_fault_not_the_clients(
    locked_engine: ServerProcess, log_dir: Path, api_key: str | None
) -> None:
    gateway = _gateway(locked_engine, log_dir, api_key)
    gateway.wait_ready()
    try:
        answer = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert answer.status_code == 503, answer.text  # the replica is down: nobody can be served
        assert answer.json()["error"]["code"] == "engine_unavailable"
        assert httpx.get(gateway.url + "/ready").status_code == 503
        assert "refused the pool's api_key" in gateway.output()
    finally:
        gateway.stop()
