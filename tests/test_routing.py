"""The placeholder replica choice: model, health and region."""

import pytest

from app.errors import ModelNotFound, NoEngineAvailable
from app.pools import PoolRegistry
from app.routing import choose_replica
from app.settings import PoolSettings


def _registry() -> PoolRegistry:
    return PoolRegistry(
        [
            PoolSettings.model_validate({"name": "eu", "region": "eu", "replicas": ["http://eu-1:1", "http://eu-2:1"]}),
            PoolSettings.model_validate({"name": "us", "region": "us", "replicas": ["http://us-1:1"]}),
        ]
    )


def _all_up(registry: PoolRegistry, model: str = "m") -> None:
    for replica in registry.replicas():
        replica.mark_up({model: {"id": model}}, rtt_ms=1.0)


def test_own_region_first() -> None:
    registry = _registry()
    _all_up(registry)
    chosen = {choose_replica(registry, "m", "us").id for _ in range(5)}
    assert chosen == {"us-0"}


def test_spreads_over_healthy_replicas_of_the_region() -> None:
    registry = _registry()
    _all_up(registry)
    assert {choose_replica(registry, "m", "eu").id for _ in range(4)} == {"eu-0", "eu-1"}


def test_least_in_flight_wins() -> None:
    registry = _registry()
    _all_up(registry)
    busy = registry.pools[0].replicas[0]
    with busy.track():
        assert {choose_replica(registry, "m", "eu").id for _ in range(4)} == {"eu-1"}


def test_other_region_when_own_is_down() -> None:
    registry = _registry()
    _all_up(registry)
    for replica in registry.pools[0].replicas:
        replica.mark_down("connection refused")
    assert choose_replica(registry, "m", "eu").id == "us-0"


def test_unknown_model_is_not_found_while_engines_answer() -> None:
    registry = _registry()
    _all_up(registry)
    with pytest.raises(ModelNotFound):
        choose_replica(registry, "other", "eu")


def test_known_model_with_all_its_replicas_down_is_unavailable() -> None:
    registry = _registry()
    _all_up(registry)
    for replica in registry.replicas():
        replica.mark_down("gone")
    with pytest.raises(NoEngineAvailable):
        choose_replica(registry, "m", "eu")


def test_nothing_reachable_is_unavailable_not_unknown() -> None:
    with pytest.raises(NoEngineAvailable):
        choose_replica(_registry(), "m", "eu")


def test_static_models_need_no_discovery() -> None:
    registry = PoolRegistry(
        [PoolSettings.model_validate({"name": "p", "replicas": ["http://a:1"], "models": ["fixed"]})]
    )
    registry.pools[0].replicas[0].mark_up({"ignored": {}}, rtt_ms=1.0)
    assert choose_replica(registry, "fixed", "local").id == "p-0"
    assert [card["id"] for card in registry.model_cards()] == ["fixed"]
