"""The gateway's side of routing: keys from requests, the registry as router nodes, and errors."""

import json

import pytest

from app.api.keys import routing_key_of
from app.errors import ModelNotFound, NoEngineAvailable
from app.factory import build_router
from app.pipeline.proxy import outcome_of_status
from app.pools.choice import choose
from app.pools.engine_stats import EngineStats
from app.pools.registry import Lease, PoolRegistry
from app.settings import GatewaySettings, PoolSettings
from protocol import SEQUENCE_FAILED, ChatCompletionRequest, CompletionRequest, error_payload
from router import Outcome, Reason


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


def test_static_models_need_no_discovery() -> None:
    pools = [PoolSettings.model_validate({"name": "p", "replicas": ["http://a:1"], "models": ["fixed"]})]
    registry = PoolRegistry(pools, build_router(GatewaySettings()))
    registry.pools["p"].replicas[0].mark_up({"ignored": {}}, rtt_ms=1.0)
    assert choose(registry, "fixed", "k", 0.0).node.id == "p-0"


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


def test_session_header_then_user_then_prompt() -> None:
    by_session = routing_key_of({"x-session-id": "s1"}, _chat(user="alice"))
    assert by_session.startswith("session:")
    assert by_session == routing_key_of({"x-session-id": "s1"}, _chat(user="bob"))
    assert routing_key_of({}, _chat(user="alice")).startswith("user:")
    assert routing_key_of({}, _chat()).startswith("prompt:")


def test_prompt_key_is_the_system_prompt_and_first_user_turn() -> None:
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    later = [*first, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    assert routing_key_of({}, _chat(messages=first)) == routing_key_of({}, _chat(messages=later))
    other_system = [{"role": "system", "content": "be verbose"}, {"role": "user", "content": "hello"}]
    assert routing_key_of({}, _chat(messages=other_system)) != routing_key_of({}, _chat(messages=first))
    assert routing_key_of({}, _chat(model="adapter", messages=first)) != routing_key_of({}, _chat(messages=first))


def test_completion_keys() -> None:
    text = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 2000})
    same_head = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 1500})
    tokens = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]})
    assert routing_key_of({}, text) == routing_key_of({}, same_head)
    assert routing_key_of({}, tokens) != routing_key_of({}, text)
    assert routing_key_of({"x-session-id": "s"}, text).startswith("session:")


def test_a_replica_belongs_to_one_pool() -> None:
    with pytest.raises(ValueError, match="one pool only"):
        GatewaySettings.model_validate(
            {"pools": [{"name": "a", "replicas": ["http://x:1"]}, {"name": "b", "replicas": ["http://x:1/"]}]}
        )


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.SUCCESS),
        (400, Outcome.SUCCESS),  # the client's fault, not the replica's
        (404, Outcome.SUCCESS),
        (429, Outcome.REJECTED),
        (503, Outcome.REJECTED),
        (500, Outcome.FAILURE),
        (502, Outcome.FAILURE),
        (504, Outcome.FAILURE),
    ],
)
def test_engine_answers_feed_the_breaker(status: int, outcome: Outcome) -> None:
    assert outcome_of_status(status) is outcome


def test_a_500_the_engine_marks_as_one_requests_failure_never_counts() -> None:
    marked = json.dumps(error_payload("failed in this request's prefill", "server_error", code=SEQUENCE_FAILED))
    assert outcome_of_status(500, marked.encode()) is Outcome.SUCCESS
    assert outcome_of_status(500, b'{"error": {"code": "engine_error"}}') is Outcome.FAILURE
    assert outcome_of_status(401) is Outcome.FAILURE  # the engine refuses the gateway's key: nobody is served


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
