"""A gateway process whose pool's replicas come from DNS (a real DNS server on loopback, the
records changed by the test as a cluster's DNS changes for a scaled Deployment), over counting
engine processes that share one port on different loopback addresses, as pods do. Engines
join and leave while clients send requests without pause: none fails, a replica that left gets
nothing more once its requests in flight ended, and one that joined takes its share."""

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from harness.dns_server import DnsServer
from harness.servers import ServerProcess, free_port

pytestmark = pytest.mark.timeout(300)

NAME = "engines.eu.svc.cluster.local"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture
def engines(log_dir: Path, tmp_path: Path) -> Iterator[dict[str, ServerProcess]]:
    port = free_port()
    started: dict[str, ServerProcess] = {}
    try:
        for host in HOSTS:
            args = ["--host", host, "--port", str(port), "--chunk-delay-s", "0.01", "--log", str(tmp_path / host)]
            server = ServerProcess("harness.counting_engine", args, port=port, log_dir=log_dir, host=host)
            started[host] = server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _replicas(gateway: ServerProcess) -> set[str]:
    pool = httpx.get(f"{gateway.url}/admin/pools", timeout=10).json()["pools"][0]
    return {replica["url"] for replica in pool["replicas"] if replica["healthy"] and not replica["draining"]}


def _executed(tmp_path: Path, host: str) -> int:
    path = tmp_path / host
    return len(path.read_text().splitlines()) if path.exists() else 0


def _until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_engines_join_and_leave_through_dns_while_requests_flow(
    engines: dict[str, ServerProcess], log_dir: Path, tmp_path: Path
) -> None:
    port = engines[HOSTS[0]].url.rsplit(":", 1)[1]
    urls = {host: f"http://{host}:{port}" for host in HOSTS}
    with DnsServer() as dns:
        dns.set(NAME, HOSTS[:2])
        discover = {"dns": NAME, "port": int(port), "interval_s": 0.2, "nameservers": [dns.address]}
        env = {
            "SWITCHYARD_POOLS": json.dumps([{"name": "eu", "region": "eu", "discover": discover}]),
            "SWITCHYARD_HEALTH_INTERVAL_S": "0.2",
        }
        gateway_port = free_port()
        gateway = ServerProcess(
            "app", ["--port", str(gateway_port)], port=gateway_port, log_dir=log_dir, env=env, ready_path="/ready"
        ).wait_ready()
        try:
            _until(lambda: _replicas(gateway) == {urls[h] for h in HOSTS[:2]})
            failures: list[object] = []
            sent = 0
            flowing = threading.Event()
            flowing.set()

            def client(number: int) -> None:
                nonlocal sent
                with httpx.Client(base_url=gateway.url, timeout=30) as http:
                    while flowing.is_set():
                        body = {
                            "model": "counting",
                            "messages": [{"role": "user", "content": f"client {number} turn {sent}"}],
                            "max_tokens": 4,
                            "stream": number % 2 == 0,  # streams too: a replica leaving ends none
                        }
                        response = http.post("/v1/chat/completions", json=body)
                        if response.status_code != 200 or (body["stream"] and "[DONE]" not in response.text):
                            failures.append((response.status_code, response.text[:200]))
                        sent += 1

            clients = [threading.Thread(target=client, args=(n,)) for n in range(6)]
            for thread in clients:
                thread.start()
            time.sleep(1)
            dns.set(NAME, HOSTS)  # scaled out
            _until(lambda: _replicas(gateway) == set(urls.values()))
            _until(lambda: _executed(tmp_path, HOSTS[2]) > 0)  # the new one takes its share
            dns.set(NAME, HOSTS[1:])  # scaled in: the first leaves
            _until(lambda: urls[HOSTS[0]] not in _replicas(gateway))
            time.sleep(1)  # its requests in flight end
            left_with = _executed(tmp_path, HOSTS[0])
            time.sleep(1.5)
            flowing.clear()
            for thread in clients:
                thread.join()
            assert failures == []
            assert sent > 100
            assert _executed(tmp_path, HOSTS[0]) == left_with  # nothing more once it left
        finally:
            gateway.stop()
