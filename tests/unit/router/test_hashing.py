"""The hash ring: stable across processes, and moving few keys when membership changes."""

import json
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st

from harness.fake_nodes import FakeNode, fake_nodes
from harness.servers import ROOT
from router import HashRing, Router, routing_key, stable_hash

KEYS = [routing_key(model="m", session_id=f"session-{i}", user=None, prompt_head="") for i in range(20_000)]


def _owners(ring: HashRing) -> list[str | None]:
    return [ring.owner(stable_hash(key)) for key in KEYS]


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=2, max_value=32), st.text(min_size=1, max_size=12))
def test_adding_a_replica_moves_about_one_in_n_plus_one_keys(existing: int, salt: str) -> None:
    """Only keys that now belong to the new replica move, and they are 1/(N+1) of all keys.

    Tolerance: within ±40 % of 1/(N+1). With 160 points per replica the new one's share of
    the ring varies by about 8 % (one standard deviation), so this is five deviations.
    """
    members = [f"http://{salt}-{i}:8000" for i in range(existing)]
    before = _owners(HashRing(members))
    newcomer = f"http://{salt}-new:8000"
    after = _owners(HashRing([*members, newcomer]))
    moved = [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]
    assert all(after[i] == newcomer for i in moved)
    expected = 1 / (existing + 1)
    assert abs(len(moved) / len(KEYS) - expected) <= 0.4 * expected


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=3, max_value=32), st.data())
def test_removing_a_replica_moves_only_its_own_keys(existing: int, data: st.DataObject) -> None:
    members = [f"http://replica-{i}:8000" for i in range(existing)]
    gone = data.draw(st.sampled_from(members))
    before = _owners(HashRing(members))
    after = _owners(HashRing([m for m in members if m != gone]))
    for old, new in zip(before, after, strict=True):
        assert old in (new, gone)


def test_walk_visits_every_member_once_starting_at_the_owner() -> None:
    ring = HashRing([f"m{i}" for i in range(10)])
    for key in KEYS[:200]:
        walk = list(ring.walk(stable_hash(key)))
        assert sorted(walk) == sorted(ring.members)
        assert walk[0] == ring.owner(stable_hash(key))


def test_insertion_order_does_not_matter() -> None:
    members = [f"m{i}" for i in range(12)]
    assert _owners(HashRing(members))[:2000] == _owners(HashRing(reversed(members)))[:2000]


_DECISIONS_SCRIPT = """
import json, sys
from router import Router, routing_key
from harness.fake_nodes import fake_nodes
router = Router("eu")
for node in [*fake_nodes(5, "eu"), *fake_nodes(3, "us")]:
    router.add(node)
keys = [routing_key(model="m", session_id=None, user=f"user-{i}", prompt_head="") for i in range(500)]
print(json.dumps([router.route(key, "m", 0.0).name for key in keys]))
"""


def test_same_membership_gives_the_same_decisions_in_a_fresh_process() -> None:
    router: Router[FakeNode] = Router("eu")
    for node in [*fake_nodes(5, "eu"), *fake_nodes(3, "us")]:
        router.add(node)
    keys = [routing_key(model="m", session_id=None, user=f"user-{i}", prompt_head="") for i in range(500)]
    decisions = [router.route(key, "m", 0.0) for key in keys]
    here = [decision.name for decision in decisions if decision is not None]
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _DECISIONS_SCRIPT], cwd=ROOT, env=env, capture_output=True, check=True, text=True
        )
        assert json.loads(out.stdout) == here
    assert len(set(here)) == 5  # every own-region replica owns some keys; none go abroad
