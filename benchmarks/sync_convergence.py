"""Benchmark: how the registry CRDT converges over a simulated network (in process).

    python -m benchmarks.sync_convergence [--seed 1]

Regions run the sidecar's protocol on `sync/crdt.py` itself: deltas pushed to every peer on
a local change, and every `interval` an anti-entropy round with each peer (bucket digests
out, the differing buckets' entries and the peer's digests back, then what the peer lacks).
The network delays each message by half the RTT, loses and duplicates messages at random.

1. Convergence after a heal: each region publishes adapters while cut off from the others
   (its deltas lost); at t=0 the partition heals. Rounds (anti-entropy intervals) and
   seconds until every region holds the same state, for 3, 10 and 50 regions.
2. Bytes: 3 regions in sync on 1,000 adapters, each publishing one contribution per round;
   the bytes the protocol sends per round, against sending the full state each round.
"""

import argparse
import heapq
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from sync import crdt
from sync.clock import Timestamp
from sync.crdt import FileRef, State, Version

BASE = "switchyard-tiny-v1"


def _version(seed: int, region: str) -> Version:
    files = (
        FileRef("adapter_config.json", 600, f"{seed:064x}"),
        FileRef("adapter_model.safetensors", 5_000_000, f"{seed + 1:064x}"),
    )
    return Version(crdt.manifest_digest(files), BASE, 8, files, Timestamp(seed, 0, region))


def _size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


@dataclass
class Node:
    name: str
    state: State = field(default_factory=State)
    digests: crdt.Digests = field(default_factory=crdt.Digests)
    clock: int = 0

    def stamp(self) -> Timestamp:
        self.clock += 1
        return Timestamp(self.clock, 0, self.name)

    def summary(self) -> dict[str, str]:
        return crdt.summary(self.state, self.digests)


class Network:
    def __init__(self, rng: random.Random, *, delay_s: float, loss: float, duplication: float) -> None:
        self.rng, self.delay_s, self.loss, self.duplication = rng, delay_s, loss, duplication
        self.now = 0.0
        self.bytes = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.partitioned: set[str] = set()

    def at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (when, next(self._order), action))

    def send(self, source: str, target: str, size: int, deliver: Callable[[], None]) -> None:
        self.bytes += size
        if source in self.partitioned or target in self.partitioned or self.rng.random() < self.loss:
            return
        self.at(self.now + self.delay_s, deliver)
        if self.rng.random() < self.duplication:
            self.at(self.now + self.delay_s * (1 + self.rng.random()), deliver)

    def run_until(self, when: float, after_each: Callable[[], bool] | None = None) -> float | None:
        """Process events up to `when`; the first time `after_each` holds, if it does."""
        while self._events and self._events[0][0] <= when:
            self.now, _, action = heapq.heappop(self._events)
            action()
            if after_each is not None and after_each():
                return self.now
        self.now = when
        return None


def _join(node: Node, delta: State) -> None:
    node.state = crdt.join(node.state, delta)


def _push(net: Network, origin: Node, nodes: list[Node], delta: State) -> None:
    size = _size(crdt.encode(delta))
    for peer in nodes:
        if peer is not origin:
            net.send(origin.name, peer.name, size, partial(_join, peer, delta))


def _round(net: Network, node: Node, peer: Node) -> None:
    """One anti-entropy exchange, as sync/peers.py runs it."""
    request = node.summary()

    def at_peer() -> None:
        answer = crdt.differing(peer.state, request, peer.summary())
        theirs = peer.summary()

        def back_home() -> None:
            _join(node, answer)
            missing = crdt.differing(node.state, theirs, node.summary())
            if missing.entries:
                net.send(node.name, peer.name, _size(crdt.encode(missing)), lambda: _join(peer, missing))

        net.send(peer.name, node.name, _size(crdt.encode(answer)) + _size(theirs), back_home)

    net.send(node.name, peer.name, _size({"region": node.name, "summary": request}), at_peer)


def _schedule_rounds(net: Network, nodes: list[Node], interval: float, rounds: int) -> None:
    for number in range(rounds):
        for node in nodes:
            start = number * interval + net.rng.random() * interval * 0.1  # regions are not in step
            for peer in nodes:
                if peer is not node:
                    net.at(start, partial(_round, net, node, peer))


def converge_after_heal(
    regions: int, *, loss: float, seed: int, interval: float = 1.0
) -> tuple[int | None, float | None]:
    rng = random.Random(seed)
    net = Network(rng, delay_s=0.025, loss=loss, duplication=0.1)
    nodes = [Node(f"r{i:02d}") for i in range(regions)]
    net.partitioned = {n.name for n in nodes}  # everyone cut off while publishing
    for node in nodes:
        for k in range(3):  # two own adapters and a shared one
            name = "shared" if k == 2 else f"{node.name}-{k}"
            delta = crdt.publish(
                node.state, name, _version(rng.randrange(10**9), node.name), 1.0, node.name, node.stamp()
            )
            _join(node, delta)
            _push(net, node, nodes, delta)
    net.run_until(0.0)
    net.partitioned = set()
    _schedule_rounds(net, nodes, interval, rounds=10)

    def converged() -> bool:
        first = nodes[0].state
        return all(n.state == first for n in nodes[1:])

    at = net.run_until(10 * interval, converged)
    if at is None:
        return None, None
    return int(at // interval) + 1, at


def bytes_per_round(adapters: int, rounds: int, *, seed: int) -> tuple[float, float, float]:
    """(protocol bytes per round with changes, bytes per round in sync, full-state bytes per round)."""
    rng = random.Random(seed)
    net = Network(rng, delay_s=0.025, loss=0.0, duplication=0.0)
    nodes = [Node(f"r{i}") for i in range(3)]
    for number in range(adapters):
        origin = nodes[number % 3]
        delta = crdt.publish(
            origin.state, f"adapter-{number:04d}", _version(number, origin.name), 1.0, origin.name, origin.stamp()
        )
        for node in nodes:
            _join(node, delta)
    full = sum(_size(crdt.encode(n.state)) * (len(nodes) - 1) for n in nodes)
    net.bytes = 0
    _schedule_rounds(net, nodes, 1.0, rounds=1)
    net.run_until(1.0)
    in_sync = net.bytes
    net.bytes = 0
    for number in range(rounds):
        for node in nodes:
            name = f"adapter-{rng.randrange(adapters):04d}"
            delta = crdt.publish(node.state, name, _version(10**6 + number, node.name), 0.5, node.name, node.stamp())
            _join(node, delta)
            _push(net, node, nodes, delta)
        _schedule_rounds(net, nodes, 1.0, rounds=1)
        net.run_until(net.now + 1.0)
    return net.bytes / rounds, in_sync, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print("| regions | loss | rounds to converge after the heal | seconds |")
    print("|---|---|---|---|")
    for regions in (3, 10, 50):
        for loss in (0.0, 0.1):
            rounds, seconds = converge_after_heal(regions, loss=loss, seed=args.seed)
            shown = "not in 10" if rounds is None else str(rounds)
            print(f"| {regions} | {loss:.0%} | {shown} | {'-' if seconds is None else f'{seconds:.2f}'} |", flush=True)
    changing, in_sync, full = bytes_per_round(1000, rounds=10, seed=args.seed)
    print()
    print("| 3 regions, 1,000 adapters | bytes per round | of the full state each round |")
    print("|---|---|---|")
    print(f"| full state to every peer | {full:,.0f} | 1.00 |")
    print(f"| in sync (bucket digests only) | {in_sync:,.0f} | {in_sync / full:.3f} |")
    print(f"| one new contribution per region per round | {changing:,.0f} | {changing / full:.3f} |")


if __name__ == "__main__":
    main()
