"""The choice of a replica (app/pools/choice.py): the router's decision over the registry, own
region first with affinity, or the error a client should see; then through a gateway in process,
over engines in three regions and over two pools that each serve their own model."""

import asyncio
import logging

import pytest

from app.api.keys import routing_key_of
from app.errors import ModelNotFound, NoEngineAvailable
from app.factory import build_router
from app.pools.choice import choose
from app.pools.engine_stats import EngineStats
from app.pools.registry import Lease, PoolRegistry
from app.settings import GatewaySettings, PoolSettings
from harness.inprocess import InProcessGateway
from protocol import ChatCompletionRequest
from router import Reason
from tests.unit.app.pools.conftest import FIRST, SECOND, Regions, route_of, wait_for


def _registry(**settings: object) -> PoolRegistry:
    pools = [
        PoolSettings.model_validate({"name": "eu", "region": "eu", "replicas": ["http://eu-1:1", "http://eu-2:1"]}),
        PoolSettings.model_validate({"name": "us", "region": "us", "replicas": ["http://us-1:1"]}),
    ]
    return PoolRegistry(pools, build_router(GatewaySettings.model_validate({"region": "eu", **settings})))


def _all_up(registry: PoolRegistry, cards: dict[str, dict[str, object]] | None = None) -> None:
    for replica in registry.replicas():
        replica.mark_up(dict(cards or {"m": {"id": "m"}}), rtt_ms=1.0)


def _chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    )


def test_own_region_with_affinity() -> None:
    registry = _registry()
    _all_up(registry)
    decisions = {choose(registry, "m", routing_key_of({}, _chat()), 0.0).node.id for _ in range(5)}
    assert len(decisions) == 1
    assert decisions <= {"eu-0", "eu-1"}


def test_other_region_when_own_is_down() -> None:
    registry = _registry()
    _all_up(registry)
    for replica in registry.pools["eu"].replicas:
        replica.mark_down("connection refused")
    decision = choose(registry, "m", "k", 0.0)
    assert (decision.node.id, decision.reason) == ("us-0", Reason.UNAVAILABLE)


def test_draining_replicas_take_no_new_requests() -> None:
    registry = _registry()
    _all_up(registry)
    home = choose(registry, "m", "k", 0.0).node
    home.set_draining(True)
    assert {choose(registry, "m", "k", 0.0).node.id for _ in range(5)} == {
        next(r.id for r in registry.pools["eu"].replicas if r is not home)
    }


def test_saturated_region_spills() -> None:
    registry = _registry()
    _all_up(registry)
    registry.pools["eu"].max_load = 1
    for replica in registry.pools["eu"].replicas:
        Lease(replica)
    decision = choose(registry, "m", "k", 0.0)
    assert (decision.region, decision.reason) == ("us", Reason.SATURATED)


def test_engine_queue_counts_as_load() -> None:
    registry = _registry()
    _all_up(registry)
    registry.pools["eu"].max_load = 4
    for replica in registry.pools["eu"].replicas:
        replica.set_engine_stats(EngineStats(running=2, waiting=4))
    assert choose(registry, "m", "k", 0.0).region == "us"


def test_unknown_model_is_not_found_while_engines_answer() -> None:
    registry = _registry()
    _all_up(registry)
    with pytest.raises(ModelNotFound):
        choose(registry, "other", "k", 0.0)


def test_known_model_with_all_its_replicas_down_is_unavailable() -> None:
    registry = _registry()
    _all_up(registry)
    for replica in registry.replicas():
        replica.mark_down("gone")
    with pytest.raises(NoEngineAvailable):
        choose(registry, "m", "k", 0.0)


def test_nothing_reachable_is_unavailable_not_unknown() -> None:
    with pytest.raises(NoEngineAvailable):
        choose(_registry(), "m", "k", 0.0)


def test_every_replica_tried_is_unavailable() -> None:
    registry = _registry()
    _all_up(registry)
    with pytest.raises(NoEngineAvailable):
        choose(registry, "m", "k", 0.0, exclude=[r.name for r in registry.replicas()])


def test_adapters_go_where_they_are_loaded() -> None:
    registry = _registry()
    _all_up(registry, {"m": {"id": "m"}, "sql": {"id": "sql", "parent": "m"}})
    registry.refresh_models()
    assert registry.is_adapter("sql")
    assert not registry.is_adapter("m")
    key = routing_key_of({}, _chat(model="sql"))
    home = choose(registry, "sql", key, 0.0).node
    other = next(r for r in registry.pools["eu"].replicas if r is not home)
    other.set_engine_stats(EngineStats(active_adapters=frozenset({"sql"})))
    decision = choose(registry, "sql", key, 0.0)
    assert (decision.node, decision.reason) == (other, Reason.ADAPTER)


# through a gateway in process: three regions of counting engines (conftest.py)


async def test_requests_stay_in_the_own_region_with_session_affinity(
    regions: Regions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="app.route")
    routes = [await regions.route(f"user-{i}") for i in range(20)]
    assert {region for region, _ in routes} == {"eu"}
    assert {replica for _, replica in routes} == {"eu-0", "eu-1"}
    for i in range(5):
        assert {await regions.route(f"user-{i}") for _ in range(3)} == {routes[i]}
    assert ": affinity (key session:" in caplog.text  # each decision is logged, explained


async def test_a_saturated_region_spills_to_the_next_nearest(regions: Regions) -> None:
    eu = [regions.engines["eu-0"], regions.engines["eu-1"]]
    for engine in eu:
        engine.behave(stall_s=1.5)  # four requests held, two on each replica
    held = [asyncio.create_task(regions.chat(f"long-{i}")) for i in range(4)]
    await wait_for(lambda: sum(engine.stalled for engine in eu) == 4)
    assert await regions.route("one-more") == ("us", "us-0")
    opened = [route_of(answer) for answer in await asyncio.gather(*held)]
    assert sorted(opened) == [("eu", "eu-0"), ("eu", "eu-0"), ("eu", "eu-1"), ("eu", "eu-1")]
    for engine in eu:
        engine.behave()

    async def back_home() -> bool:
        return (await regions.route("one-more"))[0] == "eu"

    await wait_for(back_home)


async def test_own_region_down_is_served_by_the_next_region_without_client_errors(regions: Regions) -> None:
    regions.stop("eu-0")
    regions.stop("eu-1")
    routes = [await regions.route(f"user-{i}") for i in range(10)]  # route_of asserts each is a 200
    assert set(routes) == {("us", "us-0")}
    regions.start("eu-0")
    regions.start("eu-1")
    await wait_for(regions.all_back)
    assert (await regions.route("user-0"))[0] == "eu"  # remembered in us, but the own region comes first


async def test_each_model_goes_to_the_pool_that_serves_it(two_pools: InProcessGateway) -> None:
    for model in (FIRST, SECOND):
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        response = await two_pools.client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["model"] == model
