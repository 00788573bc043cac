"""Routing policies on a simulated trace: prefix-affinity hit rate and load balance.

Sessions share a prefix (their conversation so far); their popularity is Zipf-skewed.
Requests arrive as a Poisson stream and hold a replica for an exponential service time,
so the load a policy sees is the number of requests in flight on each replica, as in the
gateway. A request is a *hit* when it lands on the replica that last served its session
(where that session's prefix is in the KV cache); *max/mean* is the busiest replica's
load over the mean load, sampled at every arrival.

Also the decision cost of the router (`Router.route`) at 8, 64 and 256 replicas.
"""

import argparse
import bisect
import heapq
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.factory import build_router
from app.pools.registry import Lease, PoolRegistry
from app.settings import GatewaySettings
from harness.fake_nodes import FakeNode
from router import DEFAULT_VNODES, HashRing, Router, routing_key, stable_hash

Policy = Callable[[str, Sequence[FakeNode]], FakeNode]


def round_robin() -> Policy:
    turn = itertools.count()
    return lambda key, nodes: nodes[next(turn) % len(nodes)]


def least_loaded() -> Policy:
    turn = itertools.count()

    def choose(key: str, nodes: Sequence[FakeNode]) -> FakeNode:
        start = next(turn)  # ties in turn, or the first replica would win every tie
        return min((nodes[(start + i) % len(nodes)] for i in range(len(nodes))), key=lambda n: n.load)

    return choose


def consistent_hashing(nodes: Sequence[FakeNode], vnodes: int) -> Policy:
    ring = HashRing((n.name for n in nodes), vnodes)
    by_name = {n.name: n for n in nodes}

    def choose(key: str, _: Sequence[FakeNode]) -> FakeNode:
        owner = ring.owner(stable_hash(key))
        assert owner is not None
        return by_name[owner]

    return choose


def bounded_loads(nodes: Sequence[FakeNode], factor: float, vnodes: int, memory: int = 0) -> Policy:
    router: Router[FakeNode] = Router("sim", load_factor=factor, vnodes=vnodes, memory=memory)
    for node in nodes:
        router.add(node)

    def choose(key: str, _: Sequence[FakeNode]) -> FakeNode:
        decision = router.route(key, "m", 0.0)
        assert decision is not None
        return decision.node

    return choose


@dataclass(frozen=True)
class Trace:
    sessions: int
    skew: float
    requests: int
    in_flight_per_replica: float
    seed: int

    def keys(self) -> list[str]:
        """Session of each request, Zipf-distributed over `sessions`."""
        rng = random.Random(self.seed)
        weights = [1 / (rank**self.skew) for rank in range(1, self.sessions + 1)]
        cumulative = list(itertools.accumulate(weights))
        total = cumulative[-1]
        names = [routing_key(model="m", session_id=f"s{i}", user=None, prompt_head="") for i in range(self.sessions)]
        return [names[bisect.bisect_left(cumulative, rng.random() * total)] for _ in range(self.requests)]


@dataclass(frozen=True)
class Result:
    hit_rate: float
    busiest_over_mean: float  # the busiest replica's average load over the mean average load
    max_over_mean: float  # at each arrival, max load / mean load: the mean over arrivals
    max_over_mean_p99: float


def simulate(trace: Trace, keys: list[str], nodes: list[FakeNode], policy: Policy) -> Result:
    rng = random.Random(trace.seed + 1)
    rate = trace.in_flight_per_replica * len(nodes)  # Little: in flight = rate * mean service time (1)
    now = 0.0
    completions: list[tuple[float, int, FakeNode]] = []  # a heap, soonest first
    last_served: dict[str, FakeNode] = {}
    hits = repeats = 0
    ratios: list[float] = []
    load_sums = [0] * len(nodes)
    for sequence, key in enumerate(keys):
        now += rng.expovariate(rate)
        while completions and completions[0][0] <= now:
            heapq.heappop(completions)[2].load -= 1
        node = policy(key, nodes)
        previous = last_served.get(key)
        if previous is not None:
            repeats += 1
            hits += previous is node
        last_served[key] = node
        node.load += 1
        heapq.heappush(completions, (now + rng.expovariate(1.0), sequence, node))
        if sequence >= len(keys) // 10:  # after the warm-up tenth
            loads = [n.load for n in nodes]
            ratios.append(max(loads) / statistics.fmean(loads))
            load_sums = [total + load for total, load in zip(load_sums, loads, strict=True)]
    ratios.sort()
    return Result(
        hits / max(repeats, 1),
        max(load_sums) / statistics.fmean(load_sums),
        statistics.fmean(ratios),
        ratios[int(len(ratios) * 0.99)],
    )


def _timed_routes(router: "Router[Any]", keys: list[str]) -> float:
    """Median µs per `Router.route` over five passes over `keys`."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for key in keys:
            decision = router.route(key, "m", 0.0)
            assert decision is not None
        runs.append((time.perf_counter() - started) / len(keys) * 1e6)
    return statistics.median(runs)


def decision_cost_us(replicas: int, samples: int) -> tuple[float, float]:
    """The router over plain nodes, and over the gateway's own replicas (live properties,
    the gateway's settings: memory of where keys went last included)."""
    rng = random.Random(7)
    urls = [f"http://10.0.{i // 250}.{i % 250}:8000" for i in range(replicas)]
    keys = [
        routing_key(model="m", session_id=f"s{rng.randrange(10**9)}", user=None, prompt_head="") for _ in range(samples)
    ]
    plain: Router[FakeNode] = Router("sim")
    for url in urls:
        plain.add(FakeNode(url, "sim", "sim", load=rng.randrange(0, 32)))
    settings = GatewaySettings.model_validate(
        {"region": "sim", "pools": [{"name": "p", "region": "sim", "replicas": urls}]}
    )
    registry = PoolRegistry(settings.pools, build_router(settings))
    for replica in registry.replicas():
        replica.mark_up({"m": {"id": "m"}}, rtt_ms=1.0)
        for _ in range(rng.randrange(0, 32)):
            Lease(replica)
    return _timed_routes(plain, keys), _timed_routes(registry.router, keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--skew", type=float, nargs="+", default=[0.8, 1.0, 1.2])
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--in-flight", type=float, default=16.0, help="mean requests in flight per replica")
    parser.add_argument("--load-factor", type=float, default=1.25)
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES, help="points per replica on the ring")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    print(
        f"{args.replicas} replicas, {args.sessions:,} sessions, {args.requests:,} requests, "
        f"{args.in_flight:g} in flight per replica on average, c = {args.load_factor}"
    )
    print("| Zipf skew | policy | hit rate | busiest/mean | max/mean at arrivals (mean) | (p99) |")
    print("|---|---|---|---|---|---|")
    for skew in args.skew:
        trace = Trace(args.sessions, skew, args.requests, args.in_flight, args.seed)
        keys = trace.keys()
        policies: dict[str, Callable[[list[FakeNode]], Policy]] = {
            "round-robin": lambda nodes: round_robin(),
            "least-loaded": lambda nodes: least_loaded(),
            "consistent hashing": lambda nodes: consistent_hashing(nodes, args.vnodes),
            f"bounded loads (c = {args.load_factor})": lambda nodes: bounded_loads(
                nodes, args.load_factor, args.vnodes
            ),
            "bounded loads + last-served memory": lambda nodes: bounded_loads(
                nodes, args.load_factor, args.vnodes, memory=65_536
            ),
        }
        for name, make in policies.items():
            nodes = [FakeNode(f"http://replica-{i}:8000", "sim", "sim") for i in range(args.replicas)]
            result = simulate(trace, keys, nodes, make(nodes))
            print(
                f"| {skew:g} | {name} | {result.hit_rate:.3f} | {result.busiest_over_mean:.2f} "
                f"| {result.max_over_mean:.2f} | {result.max_over_mean_p99:.2f} |"
            )

    print("\n| replicas | µs per decision, plain nodes | µs per decision, gateway replicas |")
    print("|---|---|---|")
    for replicas in (8, 64, 256):
        plain_us, gateway_us = decision_cost_us(replicas, 20_000)
        print(f"| {replicas} | {plain_us:.1f} | {gateway_us:.1f} |")


if __name__ == "__main__":
    main()
