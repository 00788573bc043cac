"""Several workers on one port: metrics summed over them, shared idempotency, a drain of all
on SIGTERM, a dead worker replaced (the settings that several workers need:
tests/unit/app/test_settings.py)."""

import json
import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.scrape import scrape, value
from harness.servers import Redis, ServerProcess, free_port

MODEL = "counting"
CHAT = "/v1/chat/completions"
WORKERS = 3


@pytest.fixture(scope="module")
def module_redis() -> Iterator[Redis]:
    server = Redis()
    yield server
    server.stop()


def _start(engine: ServerProcess, redis: Redis, log_dir: Path, **extra: str) -> ServerProcess:
    pools = [{"name": "p", "region": "eu", "replicas": [engine.url], "max_load": 8}]
    env = {
        "SWITCHYARD_POOLS": json.dumps(pools),
        "SWITCHYARD_REGION": "eu",
        "SWITCHYARD_WORKERS": str(WORKERS),
        "SWITCHYARD_REDIS_URL": redis.url,
        "SWITCHYARD_LOG_FORMAT": "json",
        **extra,
    }
    port = free_port()
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    return server.wait_ready()


@pytest.fixture(scope="module")
def gateway(counting_engine: ServerProcess, module_redis: Redis, log_dir: Path) -> Iterator[ServerProcess]:
    server = _start(counting_engine, module_redis, log_dir)
    yield server
    server.stop()


def _chat(url: str, **headers: str) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    # A new connection each time, so the kernel hands requests to different workers.
    return httpx.post(url + CHAT, json=body, headers=headers, timeout=30)


def _access_pids(server: ServerProcess) -> list[int]:
    lines = (json.loads(line) for line in server.log_path.read_text().splitlines() if line.startswith("{"))
    return [line["pid"] for line in lines if line["logger"] == "app.access"]


def _worker_pids(server: ServerProcess) -> set[int]:
    """The parent's children (the spawn machinery's resource tracker aside)."""
    children = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
    return {int(pid) for pid in children if "resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_text()}


def test_every_scrape_counts_every_workers_requests(gateway: ServerProcess) -> None:
    ok = {"route": CHAT, "model": MODEL, "status_class": "2xx"}
    before = value(scrape(gateway.url), "llm_requests_total", **ok)
    requests = 30
    for _ in range(requests):
        assert _chat(gateway.url).status_code == 200
    assert len(set(_access_pids(gateway))) > 1, "the requests should have reached several workers"
    # Whichever worker answers the scrape, it counts the others' requests too.
    for _ in range(8):
        samples = scrape(gateway.url)
        assert value(samples, "llm_requests_total", **ok) - before == requests
        assert value(samples, "llm_requests_in_progress", route=CHAT) == 0
        assert value(samples, "llm_queue_depth") == 0
        assert value(samples, "llm_breaker_state", pool="p", replica="p-0") == 0


def test_an_idempotency_key_is_honoured_across_workers(gateway: ServerProcess) -> None:
    key = f"workers-{time.time_ns()}"
    answers = [_chat(gateway.url, **{"Idempotency-Key": key}) for _ in range(6)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 5


def test_pools_cannot_be_changed_in_one_worker(gateway: ServerProcess) -> None:
    response = httpx.post(gateway.url + "/admin/pools/p/replicas/p-0/drain")
    assert response.status_code == 409
    assert "workers" in response.json()["error"]["message"]
    assert httpx.get(gateway.url + "/admin/pools/p").status_code == 200


def test_a_dead_worker_is_replaced_and_its_gauges_leave(
    counting_engine: ServerProcess, redis: Redis, log_dir: Path
) -> None:
    server = _start(counting_engine, redis, log_dir)
    try:
        workers = _worker_pids(server)
        assert len(workers) == WORKERS
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while (now := _worker_pids(server)) == workers or len(now) < WORKERS:
            assert time.monotonic() < deadline, f"no worker replaced {victim}: {now}"
            time.sleep(0.2)
        assert victim not in now
        for _ in range(10):
            assert _chat(server.url).status_code == 200
        assert value(scrape(server.url), "llm_requests_in_progress", route=CHAT) == 0
    finally:
        server.stop()


def test_sigterm_drains_every_worker_and_the_gateway_exits_0(
    counting_engine: ServerProcess, redis: Redis, log_dir: Path
) -> None:
    server = _start(counting_engine, redis, log_dir)
    workers = _worker_pids(server)
    httpx.post(counting_engine.url + "/control", json={"chunk_delay_s": 0.4}).raise_for_status()  # 1.2 s answers
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = [pool.submit(_chat, server.url) for _ in range(8)]
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            statuses = [answer.result().status_code for answer in answers]
    finally:
        httpx.post(counting_engine.url + "/control", json={}).raise_for_status()
    assert statuses == [200] * 8
    assert server.process.wait(30) == 0, server.output()
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    server.stop()
