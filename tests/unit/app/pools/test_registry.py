"""The pool registry (app/pools/registry.py): replicas with their health, load and models."""

from app.factory import build_router
from app.pools.choice import choose
from app.pools.engine_stats import EngineStats
from app.pools.registry import Lease, PoolRegistry
from app.settings import GatewaySettings, PoolSettings


def _registry() -> PoolRegistry:
    pools = [
        PoolSettings.model_validate({"name": "eu", "region": "eu", "replicas": ["http://eu-1:1", "http://eu-2:1"]}),
        PoolSettings.model_validate({"name": "us", "region": "us", "replicas": ["http://us-1:1"]}),
    ]
    return PoolRegistry(pools, build_router(GatewaySettings.model_validate({"region": "eu"})))


def test_static_models_need_no_discovery() -> None:
    pools = [PoolSettings.model_validate({"name": "p", "replicas": ["http://a:1"], "models": ["fixed"]})]
    registry = PoolRegistry(pools, build_router(GatewaySettings()))
    registry.pools["p"].replicas[0].mark_up({"ignored": {}}, rtt_ms=1.0)
    assert choose(registry, "fixed", "k", 0.0).node.id == "p-0"


def test_replica_keeps_its_load_and_availability_current() -> None:
    registry = _registry()
    replica = registry.pools["eu"].replicas[0]
    seen = [replica.available]  # not probed yet
    replica.mark_up({"m": {"id": "m"}}, rtt_ms=1.0)
    seen.append(replica.available)
    replica.set_draining(True)
    seen.append(replica.available)
    replica.mark_down("gone")
    replica.mark_up({"m": {"id": "m"}}, rtt_ms=1.0)
    seen.append(replica.available)  # still draining
    replica.set_draining(False)
    seen.append(replica.available)
    assert seen == [False, True, False, False, True]

    first, second = Lease(replica), Lease(replica)
    replica.set_engine_stats(EngineStats(running=3, waiting=5))
    assert (replica.in_flight, replica.load) == (2, 7)
    first.release()
    first.release()  # a lease releases once
    assert (replica.in_flight, replica.load) == (1, 6)
    second.release()
    replica.set_engine_stats(EngineStats())
    assert (replica.in_flight, replica.load, replica.idle.is_set()) == (0, 0, True)
