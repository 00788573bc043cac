"""Bounded loads: no replica is ever chosen past ceil(c * mean), whatever the loads."""

import math
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.fake_nodes import FakeNode, decide, fake_nodes
from router import HashRing, LoadBound, Router, stable_hash

FACTORS = st.sampled_from([1.0, 1.1, 1.25, 1.5, 2.0, 3.0])


def _exact_bound(factor: float, total: int, replicas: int) -> int:
    return math.ceil(Fraction(factor).limit_denominator(10_000) * (total + 1) / replicas)


@given(FACTORS, st.integers(min_value=0, max_value=10_000), st.integers(min_value=1, max_value=512))
def test_bound_is_computed_without_float_rounding(factor: float, total: int, replicas: int) -> None:
    assert LoadBound(factor)(total, replicas) == _exact_bound(factor, total, replicas)


def _router(nodes: list[FakeNode], factor: float) -> Router[FakeNode]:
    router: Router[FakeNode] = Router("eu", load_factor=factor)
    for node in nodes:
        router.add(node)
    return router


@settings(max_examples=300)
@given(FACTORS, st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=40), st.text(max_size=20))
def test_no_replica_is_chosen_above_the_bound_under_any_load_vector(factor: float, loads: list[int], key: str) -> None:
    nodes = fake_nodes(len(loads))
    for node, load in zip(nodes, loads, strict=True):
        node.load = load
    decision = _router(nodes, factor).route(key, "m", 0.0)
    assert decision is not None
    bound = _exact_bound(factor, sum(loads), len(loads))
    assert decision.bound == bound
    assert decision.node.load + 1 <= bound  # after the placement it is within ceil(c * mean)
    # ...and it is the first replica from the key's point that had room.
    walk = list(HashRing(node.name for node in nodes).walk(stable_hash(key)))
    loads_by_name = {node.name: node.load for node in nodes}
    assert decision.name == next(name for name in walk if loads_by_name[name] < bound)


@settings(max_examples=50, deadline=None)
@given(
    FACTORS,
    st.integers(min_value=1, max_value=16),
    st.lists(st.integers(0, 20), min_size=50, max_size=400),
    st.sampled_from([0, 8, 1000]),
)
def test_placing_requests_one_by_one_keeps_every_replica_within_the_bound(
    factor: float, replicas: int, sessions: list[int], memory: int
) -> None:
    """Skewed keys (few sessions, many requests) cannot push a replica over ceil(c * mean),
    with or without the memory of where each key went last."""
    nodes = fake_nodes(replicas)
    router: Router[FakeNode] = Router("eu", load_factor=factor, memory=memory)
    for node in nodes:
        router.add(node)
    for placed, session in enumerate(sessions, start=1):
        decision = router.route(f"session:{session}", "m", 0.0)
        assert decision is not None
        decision.node.load += 1
        assert max(node.load for node in nodes) <= _exact_bound(factor, placed - 1, replicas)


def test_with_even_loads_a_key_stays_on_its_replica() -> None:
    nodes = fake_nodes(8)
    router = _router(nodes, 1.25)
    homes = {key: decide(router, key).name for key in map(str, range(100))}
    for node in nodes:
        node.load = 3
    assert {key: decide(router, key).name for key in homes} == homes
