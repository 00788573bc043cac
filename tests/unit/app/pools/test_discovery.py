"""Pools whose replicas come from DNS (app/pools/discovery.py), against a real DNS server on
loopback and a gateway in process over counting engines: replicas that join are probed before
they get traffic, replicas that leave are drained, not cut, and while both happen under a
steady stream of requests none fails. A resolver that fails changes nothing; a name with no
records empties the pool's discovered part; the settings' own replicas stay."""

import asyncio
from collections.abc import Callable, Iterator

import pytest
from starlette.types import ASGIApp

from app.settings import GatewaySettings
from harness.counting_engine import CountingEngine
from harness.dns_server import DnsServer
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings

NAME = "engines.eu.svc.cluster.local"
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
URLS = {address: f"http://{f'[{address}]' if ':' in address else address}:8000" for address in ADDRESSES}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def _settings(dns: DnsServer, static: list[str] | None = None) -> GatewaySettings:
    discover = {"dns": NAME, "port": 8000, "interval_s": 0.05, "nameservers": [dns.address]}
    return pool_settings(static or [], pool={"discover": discover}, health_interval_s=0.05, max_attempts=1)


def _urls(gateway: InProcessGateway) -> dict[str, bool]:
    """The pool's replicas: URL -> whether it takes traffic."""
    pool = gateway.app.state.gateway.registry.pools["p"]
    return {replica.url: replica.available for replica in pool.replicas}


async def _until(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_replicas_join_and_leave_through_dns_while_requests_flow_and_none_fails(dns: DnsServer) -> None:
    engines = {url: CountingEngine(name=url) for url in URLS.values()}
    dns.set(NAME, ADDRESSES[:1])
    async with gateway_in_process(_settings(dns), {u: e.app for u, e in engines.items()}) as gateway:
        await _until(lambda: _urls(gateway) == {URLS["10.0.0.1"]: True})
        failures: list[object] = []
        answered = 0
        flowing = True

        async def client() -> None:
            nonlocal answered
            while flowing:  # each its own conversation: consistent hashing spreads them over the replicas
                body = {
                    "model": "counting",
                    "messages": [{"role": "user", "content": f"hi {answered}"}],
                    "max_tokens": 2,
                }
                response = await gateway.client.post("/v1/chat/completions", json=body)
                if response.status_code != 200:
                    failures.append((response.status_code, response.text))
                answered += 1

        clients = [asyncio.create_task(client()) for _ in range(4)]
        dns.set(NAME, ADDRESSES)  # scaled out: two join
        await _until(lambda: set(_urls(gateway)) == set(URLS.values()) and all(_urls(gateway).values()))
        await _until(lambda: all(sum(e.executed.values()) for e in engines.values()))  # each takes traffic
        dns.set(NAME, ADDRESSES[1:])  # scaled in: the first leaves
        await _until(lambda: URLS["10.0.0.1"] not in _urls(gateway))
        before = sum(engines[URLS["10.0.0.1"]].executed.values())
        await asyncio.sleep(0.3)
        flowing = False
        await asyncio.gather(*clients)
        assert failures == []
        assert answered > 50
        assert sum(engines[URLS["10.0.0.1"]].executed.values()) == before  # no traffic once it left


async def test_a_replica_that_fails_its_check_gets_no_traffic_until_it_passes(dns: DnsServer) -> None:
    engines: dict[str, ASGIApp] = {URLS["10.0.0.1"]: CountingEngine().app}  # 10.0.0.2's engine: not yet up
    dns.set(NAME, ADDRESSES[:2])
    async with gateway_in_process(_settings(dns), engines) as gateway:
        await _until(lambda: URLS["10.0.0.1"] in _urls(gateway))
        await asyncio.sleep(0.3)  # a few rounds
        assert URLS["10.0.0.2"] not in _urls(gateway)  # never added: nothing could go to it
        gateway.engines[URLS["10.0.0.2"]] = CountingEngine().app  # it starts
        await _until(lambda: _urls(gateway).get(URLS["10.0.0.2"]) is True)


async def test_a_failing_resolver_changes_nothing_and_a_name_with_no_records_empties_the_discovered_part(
    dns: DnsServer,
) -> None:
    static = "http://static-engine"
    engines: dict[str, ASGIApp] = {url: CountingEngine().app for url in [*URLS.values(), static]}
    dns.set(NAME, ADDRESSES[:2])
    async with gateway_in_process(_settings(dns, [static]), engines) as gateway:
        await _until(lambda: len(_urls(gateway)) == 3 and all(_urls(gateway).values()))
        dns.failing = True  # SERVFAIL: the resolver cannot tell
        queries = dns.queries
        await _until(lambda: dns.queries > queries + 4)
        assert len(_urls(gateway)) == 3
        dns.failing = False
        dns.records.pop(NAME)  # NXDOMAIN: no pod is ready
        await _until(lambda: set(_urls(gateway)) == {static})  # the settings' own replica stays
        dns.set(NAME, ADDRESSES[:1])
        await _until(lambda: set(_urls(gateway)) == {static, URLS["10.0.0.1"]})


async def test_one_address_family_counts_so_a_dual_stack_pod_is_one_replica(dns: DnsServer) -> None:
    v6 = "http://[fd00::3]:8000"
    engines: dict[str, ASGIApp] = {url: CountingEngine().app for url in [*URLS.values(), v6]}
    dns.set(NAME, ["10.0.0.1", "fd00::1"])  # one pod, both families: its IPv4 address only
    async with gateway_in_process(_settings(dns), engines) as gateway:
        assert set(_urls(gateway)) == {URLS["10.0.0.1"]}  # found before the gateway said it was ready
        dns.set(NAME, ["fd00::3"])  # an IPv6-only cluster
        await _until(lambda: set(_urls(gateway)) == {v6})


async def test_a_replica_an_operator_removed_stays_out_until_it_leaves_dns(dns: DnsServer) -> None:
    engines: dict[str, ASGIApp] = {url: CountingEngine().app for url in URLS.values()}
    dns.set(NAME, ADDRESSES[:2])
    async with gateway_in_process(_settings(dns), engines) as gateway:
        await _until(lambda: len(_urls(gateway)) == 2)
        replica = gateway.app.state.gateway.registry.find_url(URLS["10.0.0.1"])
        removed = await gateway.client.delete(f"/admin/pools/p/replicas/{replica.id}")
        assert removed.status_code == 200, removed.text
        await asyncio.sleep(0.3)  # rounds that still find it in DNS
        assert set(_urls(gateway)) == {URLS["10.0.0.2"]}
        dns.set(NAME, ADDRESSES[1:2])  # it left DNS ...
        await asyncio.sleep(0.3)
        dns.set(NAME, ADDRESSES[:2])  # ... and came back (a new pod on its address): it joins
        await _until(lambda: set(_urls(gateway)) == {URLS["10.0.0.1"], URLS["10.0.0.2"]})
