"""The registry CRDT (sync/crdt.py): its semantics case by case, then hypothesis: the join's
laws on random states, and 3 to 5 replicas exchanging deltas over a network that drops,
duplicates and reorders them ending, after anti-entropy, in one state and one recipe."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync import crdt
from sync.clock import Timestamp
from sync.crdt import State, Version
from tests.unit.sync.replicas import BASES, Region, version

NAMES = ("alpha", "beta")


def _parts(state: State, name: str = "alpha") -> tuple[crdt.Part, ...]:
    """What `name` serves: its recipe's parts (the recipe must exist)."""
    served = crdt.recipe(state, name)
    assert served is not None, f"{name} is not served"
    return served.parts


# --- semantics ---------------------------------------------------------------------------------


def test_a_published_adapter_is_served_everywhere_its_delta_reaches() -> None:
    a, b = Region("a"), Region("b")
    delta = a.publish("alpha", version(1))
    b.apply(delta)
    assert _parts(b.state) == (crdt.Part("a", version(1).digest, 1.0),)
    assert crdt.recipe(a.state, "alpha") == crdt.recipe(b.state, "alpha")


def test_contributions_of_several_regions_stack_in_region_order() -> None:
    a, b, c = Region("a"), Region("b"), Region("c")
    deltas = [c.publish("alpha", version(3), 0.5), a.publish("alpha", version(1)), b.publish("alpha", version(2), 2)]
    for region in (a, b, c):
        for delta in deltas:
            region.apply(delta)
    recipes = {crdt.recipe(r.state, "alpha") for r in (a, b, c)}
    assert len(recipes) == 1
    [served] = recipes
    assert served is not None
    assert [(p.region, p.weight) for p in served.parts] == [("a", 1.0), ("b", 2.0), ("c", 0.5)]


def test_a_regions_newer_contribution_replaces_its_older_one() -> None:
    a, b = Region("a"), Region("b")
    first = a.publish("alpha", version(1))
    second = a.publish("alpha", version(2))
    b.apply(second)
    b.apply(first)  # late and out of order: the higher sequence still wins
    assert _parts(b.state) == (crdt.Part("a", version(2).digest, 1.0),)


def test_a_publish_concurrent_with_a_retire_wins() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    retired = a.retire("alpha")  # a has not seen b's publish below
    published = b.publish("alpha", version(2))
    a.apply(published)
    b.apply(retired)
    for region in (a, b):
        assert _parts(region.state) == (crdt.Part("b", version(2).digest, 1.0),)  # a's own part was retired


def test_a_retire_that_saw_everything_removes_the_adapter() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    a.apply(b.publish("alpha", version(2)))
    b.apply(a.retire("alpha"))
    assert crdt.recipe(a.state, "alpha") is None
    assert crdt.recipe(b.state, "alpha") is None
    a.publish("alpha", version(3))  # published again: b's old contribution stays retired
    assert _parts(a.state) == (crdt.Part("a", version(3).digest, 1.0),)


def test_a_revoked_version_is_never_served_again() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    a.apply(b.publish("alpha", version(2)))
    b.apply(a.revoke("alpha", version(1).digest))
    assert [p.region for p in _parts(b.state)] == ["b"]
    b.apply(a.publish("alpha", version(1)))  # publishing the revoked version again does not bring it back
    assert [p.region for p in _parts(b.state)] == ["b"]


def test_a_withdrawn_contribution_leaves_the_others() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    a.apply(b.publish("alpha", version(2)))
    a.withdraw("alpha")
    assert [p.region for p in _parts(a.state)] == ["b"]


def test_contributions_on_another_base_model_wait() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    a.apply(b.publish("alpha", version(2, base=BASES[1])))
    served = crdt.recipe(a.state, "alpha")
    assert served is not None
    assert (served.base_model, [p.region for p in served.parts]) == (BASES[0], ["a"])


def test_the_audit_log_is_in_timestamp_order() -> None:
    a = Region("a", wall=2_000)
    a.publish("alpha", version(1, region="a"))
    a.revoke("alpha", version(1).digest)
    a.retire("alpha")
    events = crdt.audit(a.state, "alpha")
    assert [at for at, _ in events] == sorted(at for at, _ in events)
    assert [line for _, line in events] == [
        f"version {version(1).digest[:12]} published by a",
        f"a serves {version(1).digest[:12]} at weight 1.0 (seq 1)",
        f"version {version(1).digest[:12]} revoked by a",
        "retired by a",
    ]


def test_mutators_refuse_what_does_not_exist() -> None:
    a = Region("a")
    with pytest.raises(KeyError):
        a.retire("alpha")
    with pytest.raises(KeyError):
        a.revoke("alpha", "0" * 64)
    with pytest.raises(KeyError):
        a.withdraw("alpha")
    forged = Version("0" * 64, BASES[0], 8, version(1).files, Timestamp(1, 0, "a"))
    with pytest.raises(ValueError, match="digest"):
        a.publish("alpha", forged)


def test_the_encoding_round_trips_and_refuses_malformed_states() -> None:
    a, b = Region("a"), Region("b")
    b.apply(a.publish("alpha", version(1)))
    b.retire("alpha")
    b.publish("beta", version(2), 0.25)
    b.revoke("beta", version(2).digest)
    assert crdt.decode(crdt.encode(b.state)) == b.state
    broken = crdt.encode(b.state)
    broken["entries"]["beta"]["versions"][version(2).digest]["files"][0][1] += 1  # the manifest no longer matches
    with pytest.raises(ValueError, match="digest"):
        crdt.decode(broken)
    malformed_states: list[object] = [{}, {"entries": []}, {"entries": {"x": {"adds": [["a", 0]]}}, "dots": {}}, None]
    for malformed in malformed_states:
        with pytest.raises(ValueError, match=r"malformed|not a dot"):
            crdt.decode(malformed)


def test_the_newest_timestamp_is_the_last_mutation() -> None:
    a = Region("a")
    a.publish("alpha", version(1))
    assert crdt.newest_timestamp(a.state) == Timestamp(a.wall, 0, "a")


# --- hypothesis ----------------------------------------------------------------------------------

operations = st.tuples(
    st.sampled_from(["publish", "publish", "retire", "withdraw", "revoke"]),
    st.sampled_from(NAMES),
    st.integers(0, 3),  # which version
    st.sampled_from([1.0, 0.5, 2.0]),
    st.booleans(),  # for publish: the other base model
)


def _run(region: Region, op: tuple[str, str, int, float, bool]) -> State | None:
    kind, name, seed, weight, other_base = op
    try:
        if kind == "publish":
            return region.publish(name, version(seed, BASES[other_base], region.name), weight)
        if kind == "retire":
            return region.retire(name)
        if kind == "withdraw":
            return region.withdraw(name)
        return region.revoke(name, version(seed, BASES[other_base], region.name).digest)
    except KeyError:
        return None  # nothing to retire, withdraw or revoke here yet


@st.composite
def states(draw: st.DrawFn) -> State:
    """A state reached by a few regions' operations with partial exchange."""
    regions = [Region(f"r{i}") for i in range(3)]
    for _ in range(draw(st.integers(0, 12))):
        region = draw(st.sampled_from(regions))
        delta = _run(region, draw(operations))
        if delta is not None and draw(st.booleans()):
            draw(st.sampled_from(regions)).apply(delta)
    return draw(st.sampled_from(regions)).state


@given(states(), states(), states())
def test_join_is_commutative_associative_and_idempotent(a: State, b: State, c: State) -> None:
    assert crdt.join(a, b) == crdt.join(b, a)
    assert crdt.join(crdt.join(a, b), c) == crdt.join(a, crdt.join(b, c))
    assert crdt.join(a, a) == a
    assert crdt.join(a, State()) == a


def _anti_entropy_round(regions: list[Region]) -> None:
    """Every region pulls from the next one (a ring): digests, then the entries that differ."""
    for region, peer in zip(regions, regions[1:] + regions[:1], strict=True):
        region.apply(crdt.differing(peer.state, crdt.summary(region.state)))


@given(
    st.integers(3, 5),
    st.lists(
        st.tuples(
            st.integers(0, 4),
            operations,
            st.lists(st.sampled_from(["deliver", "drop", "duplicate", "later"]), min_size=5, max_size=5),
        ),
        max_size=25,
    ),
    st.randoms(use_true_random=False),
)
def test_replicas_converge_despite_lost_duplicated_and_reordered_deltas(
    count: int, script: list[tuple[int, tuple[str, str, int, float, bool], list[str]]], rng: object
) -> None:
    regions = [Region(f"r{i}") for i in range(count)]
    in_flight: list[tuple[Region, State]] = []
    for who, op, fates in script:
        origin = regions[who % count]
        delta = _run(origin, op)
        if delta is None:
            continue
        for peer, fate in zip((r for r in regions if r is not origin), fates, strict=False):
            if fate == "deliver":
                peer.apply(delta)
            elif fate == "duplicate":
                peer.apply(delta)
                in_flight.append((peer, delta))
            elif fate == "later":
                in_flight.append((peer, delta))
        if in_flight and fates[-1] != "drop":  # some late message arrives now, out of order
            peer, late = in_flight.pop(rng.randrange(len(in_flight)))  # type: ignore[attr-defined]
            peer.apply(late)
    for peer, late in in_flight:
        peer.apply(late)
    # Anti-entropy repairs what was dropped: a ring of pulls spreads everything in n - 1 rounds
    # one way; two ways in all (pull then push) makes it one round for each neighbour.
    for _ in range(count):
        _anti_entropy_round(regions)
    first = regions[0].state
    assert all(r.state == first for r in regions)
    for name in NAMES:
        recipes = {crdt.recipe(r.state, name) for r in regions}
        assert len(recipes) == 1
        digests = {recipe.digest if recipe else None for recipe in recipes}
        assert len(digests) == 1  # every region would stack the same parts: the same merged weights


def test_anti_entropy_sends_only_the_buckets_that_differ() -> None:
    a, b = Region("a"), Region("b")
    for number in range(1000):
        b.apply(a.publish(f"adapter-{number}", version(number % 4, region="a")))
    assert a.state == b.state
    assert 240 <= len(crdt.summary(a.state)) <= 256  # non-empty buckets only
    assert crdt.differing(a.state, crdt.summary(b.state)).entries == {}
    a.publish("adapter-7", version(5, region="a"))  # one change
    changed = crdt.differing(a.state, crdt.summary(b.state))
    assert "adapter-7" in changed.entries
    assert len(changed.entries) < 15  # its bucket's few entries, not the thousand
    digests = crdt.Digests()
    assert crdt.summary(a.state, digests) == crdt.summary(a.state)
