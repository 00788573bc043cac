"""The replicas' health (app/pools/health.py), through gateways in process: probes take a dead
replica or pool out and bring a recovered one back after its half-open probe, and a replica
that refuses the pool's API key is down (the operator's fault, never a client's 401)."""

import itertools
from collections.abc import Iterator

import httpx
import pytest
from starlette.types import ASGIApp

from app.settings import GatewaySettings
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import MODEL
from harness.inprocess import InProcessGateway, gateway_in_process
from router import HashRing, routing_key, stable_hash
from tests.unit.app.pools.conftest import FIRST, SECOND, SOUTH, Regions, wait_for


async def _sessions_homed_on(regions: Regions, replica_id: str, count: int) -> Iterator[str]:
    """Fresh session ids whose ring home is `replica_id` (computed, not sent: the gateway
    remembers where each key went last, so a probing request would move it)."""
    replicas = await regions.replicas()
    eu = [str(r["url"]) for r in replicas.values() if str(r["id"]).startswith("eu-")]
    ring, target = HashRing(eu), str(replicas[replica_id]["url"])
    homed = (f"fresh-{replica_id}-{i}" for i in itertools.count())
    keys = ((s, routing_key(model=MODEL, session_id=s, user=None, prompt_head="")) for s in homed)
    return itertools.islice((s for s, key in keys if ring.owner(stable_hash(key)) == target), count)


async def test_a_recovered_replica_returns_after_its_half_open_probe(regions: Regions) -> None:
    sessions = await _sessions_homed_on(regions, "eu-0", 500)
    before = (await regions.replicas())["eu-0"]["times_ejected"]
    assert isinstance(before, int)
    regions.stop("eu-0")
    assert await regions.route(next(sessions)) == ("eu", "eu-1")  # the connect error fails over at once
    ejected = (await regions.replicas())["eu-0"]
    assert ejected["breaker"] == "open"
    assert isinstance(ejected["times_ejected"], int)
    assert ejected["times_ejected"] > before
    regions.start("eu-0")

    # Healthy again by its probes, then back in rotation once its half-open probe passes:
    # new keys whose home it is go to it again.
    async def home_again() -> bool:
        return await regions.route(next(sessions)) == ("eu", "eu-0")

    await wait_for(home_again)
    assert (await regions.replicas())["eu-0"]["breaker"] == "closed"


async def test_a_dead_pool_leaves_the_other_serving(two_pools: InProcessGateway) -> None:
    del two_pools.engines[SOUTH]

    async def south_down() -> bool:
        return not (await two_pools.client.get("/status")).json()["pools"][1]["healthy_replicas"]

    await wait_for(south_down, limit_s=5)
    unavailable = await _chat(two_pools, SECOND)
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "engine_unavailable"
    assert (await _chat(two_pools, FIRST)).status_code == 200
    assert [m["id"] for m in (await two_pools.client.get("/v1/models")).json()["data"]] == [FIRST]
    assert (await two_pools.client.get("/ready")).status_code == 200


async def _chat(gateway: InProcessGateway, model: str, **fields: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | fields
    return await gateway.client.post("/v1/chat/completions", json=body)


# the pool's API key: the gateway's key to its engines, sent on every request to them

KEY = "engine-key-for-tests"
LOCKED = "http://locked"


def _locked_pool(api_key: str | None) -> tuple[GatewaySettings, dict[str, ASGIApp]]:
    """A pool whose one engine takes KEY only, with `api_key` as the pool's."""
    pool: dict[str, object] = {"name": "locked", "replicas": [LOCKED]}
    if api_key:
        pool["api_key"] = api_key
    settings = GatewaySettings.model_validate({"auth_mode": "disabled", "pools": [pool], "health_interval_s": 0.5})
    return settings, {LOCKED: create_engine_app(FakeEngine(model_name=FIRST), api_key=KEY)}


async def test_the_pools_key_opens_the_engine() -> None:
    settings, engines = _locked_pool(KEY)
    transport = httpx.ASGITransport(app=engines[LOCKED])
    async with httpx.AsyncClient(transport=transport, base_url=LOCKED) as engine:
        body = {"model": FIRST, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (await engine.post("/v1/chat/completions", json=body)).status_code == 401
    async with gateway_in_process(settings, engines) as gateway:
        for stream in (False, True):
            answer = await _chat(gateway, FIRST, stream=stream)
            assert answer.status_code == 200, answer.text
        assert FIRST in {card["id"] for card in (await gateway.client.get("/v1/models")).json()["data"]}


@pytest.mark.parametrize("api_key", [None, "a-wrong-key"])
async def test_a_refused_key_is_the_operators_fault_not_the_clients(
    api_key: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    settings, engines = _locked_pool(api_key)
    async with gateway_in_process(settings, engines) as gateway:
        answer = await _chat(gateway, FIRST)
        assert answer.status_code == 503, answer.text  # the replica is down: nobody can be served
        assert answer.json()["error"]["code"] == "engine_unavailable"
        assert (await gateway.client.get("/ready")).status_code == 503
    assert "refused the pool's api_key" in caplog.text
