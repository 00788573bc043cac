"""Routing decisions across regions, and the reasons they give."""

from harness.fake_nodes import FakeNode, decide, fake_nodes
from router import Outcome, Reason, Router, routing_key

KEY = routing_key(model="m", session_id="s-1", user=None, prompt_head="")


def _router(*nodes: FakeNode, region: str = "eu", latencies: dict[str, float] | None = None) -> Router[FakeNode]:
    router: Router[FakeNode] = Router(region, latencies_ms=latencies)
    for node in nodes:
        router.add(node)
    return router


def test_own_region_first_with_affinity() -> None:
    router = _router(*fake_nodes(3, "us"), *fake_nodes(3, "eu"))
    decision = decide(router, KEY)
    assert (decision.region, decision.reason) == ("eu", Reason.AFFINITY)
    assert decision.name == decision.home
    assert decide(router, KEY).name == decision.name


def test_keys_spread_over_the_region() -> None:
    router = _router(*fake_nodes(4, "eu"))
    names = {
        decide(router, routing_key(model="m", session_id=None, user=f"u{i}", prompt_head="")).name for i in range(200)
    }
    assert len(names) == 4


def test_region_down_fails_over_to_the_next() -> None:
    eu = fake_nodes(2, "eu")
    router = _router(*eu, *fake_nodes(2, "us"), *fake_nodes(2, "ap"), latencies={"us": 10.0, "ap": 50.0})
    for node in eu:
        node.available = False
    decision = decide(router, KEY)
    assert (decision.region, decision.reason, decision.passed) == ("us", Reason.UNAVAILABLE, (("eu", "unavailable"),))


def test_saturated_region_spills_and_everything_saturated_is_overloaded() -> None:
    eu, us = fake_nodes(2, "eu", capacity=2), fake_nodes(2, "us", capacity=2)
    router = _router(*eu, *us)
    for node in eu:
        node.load = 2
    decision = decide(router, KEY)
    assert (decision.region, decision.reason) == ("us", Reason.SATURATED)
    for node in us:
        node.load = 2
    decision = decide(router, KEY)
    assert (decision.region, decision.reason) == ("eu", Reason.OVERLOADED)
    assert decision.passed == (("eu", "saturated"), ("us", "saturated"))


def test_home_over_the_bound_spills_to_the_next_on_the_ring() -> None:
    nodes = fake_nodes(4, "eu")
    router = _router(*nodes)
    home = decide(router, KEY).node
    home.load = 5  # mean with the new request (6/4) * 1.25 -> bound 2
    decision = decide(router, KEY)
    assert decision.reason is Reason.SPILL_OVER
    assert decision.home == home.name
    assert decision.name != home.name
    assert decision.bound == 2


def test_home_unavailable_goes_to_the_next_on_the_ring_as_ejected() -> None:
    router = _router(*fake_nodes(4, "eu"))
    home = decide(router, KEY).node
    home.available = False
    decision = decide(router, KEY)
    assert (decision.reason, decision.home) == (Reason.EJECTED, home.name)
    home.available = True
    assert decide(router, KEY).name == home.name


def test_ejected_replica_gets_one_half_open_trial_then_returns() -> None:
    router = _router(*fake_nodes(4, "eu"))
    home = decide(router, KEY).node
    for _ in range(5):
        router.record(home.name, Outcome.FAILURE, 0.0)
    assert decide(router, KEY, now=1.0).reason is Reason.EJECTED
    trial = decide(router, KEY, now=30.0)
    assert (trial.name, trial.trial) == (home.name, True)
    assert decide(router, KEY, now=30.0).name != home.name  # no second request during the trial
    router.record(home.name, Outcome.SUCCESS, 30.2)
    assert decide(router, KEY, now=30.3).reason is Reason.AFFINITY


def test_excluded_replicas_are_skipped() -> None:
    router = _router(*fake_nodes(2, "eu"), *fake_nodes(1, "us"))
    first = decide(router, KEY)
    second = decide(router, KEY, exclude={first.name})
    assert second.region == "eu"
    assert second.name != first.name
    assert decide(router, KEY, exclude={first.name, second.name}).region == "us"


def test_replicas_with_the_adapter_loaded_are_preferred() -> None:
    nodes = fake_nodes(6, "eu")
    for node in nodes:
        node.models = frozenset({"m", "sql-lora"})
    router = _router(*nodes)
    key = routing_key(model="sql-lora", session_id="s-9", user=None, prompt_head="")
    home = decide(router, key, model="sql-lora").node
    holder = next(node for node in nodes if node is not home)
    holder.adapters = frozenset({"sql-lora"})
    decision = decide(router, key, model="sql-lora", adapter="sql-lora")
    assert (decision.name, decision.reason) == (holder.name, Reason.ADAPTER)
    holder.load = 10  # past the bound: the preference yields to the load bound
    assert decide(router, key, model="sql-lora", adapter="sql-lora").name != holder.name


def test_only_replicas_that_serve_the_model() -> None:
    eu = fake_nodes(3, "eu")
    eu[1].models = frozenset({"m", "big"})
    router = _router(*eu, *fake_nodes(2, "us"))
    for i in range(30):
        assert decide(router, f"k{i}", model="big").name == eu[1].name
    assert router.route(KEY, "unknown", 0.0) is None


def test_membership_changes_take_effect() -> None:
    nodes = fake_nodes(3, "eu")
    router = _router(*nodes)
    home = decide(router, KEY).name
    router.remove(home)
    assert decide(router, KEY).name != home
    router.add(next(node for node in nodes if node.name == home))
    assert decide(router, KEY).name == home


def test_with_memory_a_key_stays_where_it_last_went_while_there_is_room() -> None:
    nodes = fake_nodes(4, "eu")
    router: Router[FakeNode] = Router("eu", memory=100)
    for node in nodes:
        router.add(node)
    home = decide(router, KEY).node
    home.load = 5
    spilled = decide(router, KEY).node
    assert spilled is not home
    home.load = 0
    decision = decide(router, KEY)  # back below the bound, but the newest prefix is on `spilled`
    assert (decision.node, decision.reason, decision.home) == (spilled, Reason.RECENT, home.name)
    spilled.load = 5
    assert decide(router, KEY).node is home  # over the bound: memory yields


def test_memory_is_bounded_and_forgets_the_oldest() -> None:
    nodes = fake_nodes(3, "eu")
    router: Router[FakeNode] = Router("eu", memory=2)
    for node in nodes:
        router.add(node)
    keys = ["a", "b", "c"]
    homes = {key: decide(router, key).node for key in keys}
    spilled = {}
    for key in keys:
        homes[key].load = 9
        spilled[key] = decide(router, key).node
        homes[key].load = 0
    # "a" was evicted by "b" and "c": it is routed by the ring again; "c" is remembered.
    assert decide(router, "a").node is homes["a"]
    assert decide(router, "c").node is spilled["c"]


def test_memory_never_leaves_the_own_region() -> None:
    router: Router[FakeNode] = Router("eu", memory=10)
    eu = fake_nodes(1, "eu")
    for node in [*eu, *fake_nodes(1, "us")]:
        router.add(node)
    eu[0].available = False
    assert decide(router, KEY).region == "us"
    eu[0].available = True
    assert decide(router, KEY).region == "eu"
