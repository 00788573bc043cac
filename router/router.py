"""The router: nearest region with room, and inside it consistent hashing with bounded loads.

Optionally the router remembers, per key, the replica that served it last: a key goes back
there while that replica is below the bound, because it holds the key's newest prefix (the
whole conversation so far), where the ring's home may hold an older one. Without that
memory a hot key that spills alternates between home and the next replica, missing the
cache both ways (docs/benchmarks.md, routing trace).

Pure and deterministic: the gateway passes the time, and the nodes it hands over carry their
own live stats (load, health), read while routing. Nothing here does I/O.
"""

from collections import OrderedDict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from router.balance import DEFAULT_LOAD_FACTOR, LoadBound
from router.decision import Decision, Reason
from router.hashing import DEFAULT_VNODES, HashRing, stable_hash
from router.outliers import Outcome, OutlierDetector, OutlierPolicy
from router.regions import RegionOrder

__all__ = ["Node", "Router"]


class Node(Protocol):
    """A replica as the router sees it."""

    @property
    def name(self) -> str:
        """Its place on the ring: the same in every gateway process (its URL, say)."""

    @property
    def region(self) -> str: ...

    @property
    def group(self) -> str:
        """Its pool: no more than half a pool is ejected at once."""

    @property
    def load(self) -> int:
        """Requests in flight from this gateway plus those queued in the engine."""

    @property
    def capacity(self) -> int | None:
        """The load at which it is saturated; None when only the load bound applies."""

    @property
    def available(self) -> bool:
        """Up by its health probes and taking new requests (not draining)."""

    def serves(self, model: str) -> bool: ...

    def holds(self, adapter: str) -> bool:
        """The adapter is loaded there now."""


NodeT = TypeVar("NodeT", bound=Node)


@dataclass(slots=True)
class _Region(Generic[NodeT]):
    nodes: dict[str, NodeT]
    ring: HashRing


@dataclass(slots=True)
class _Choice(Generic[NodeT]):
    node: NodeT
    reason: Reason
    home: str
    bound: int
    saturated: bool


class Router(Generic[NodeT]):
    def __init__(
        self,
        region: str,
        *,
        load_factor: float = DEFAULT_LOAD_FACTOR,
        vnodes: int = DEFAULT_VNODES,
        latencies_ms: Mapping[str, float] | None = None,
        outliers: OutlierPolicy | None = None,
        memory: int = 0,
    ) -> None:
        self.regions = RegionOrder(region, latencies_ms)
        self.outliers = OutlierDetector(outliers)
        self._bound = LoadBound(load_factor)
        self._vnodes = vnodes
        self._regions: dict[str, _Region[NodeT]] = {}
        self._groups: dict[str, set[str]] = {}
        self._by_name: dict[str, NodeT] = {}
        # Key -> the replica that served it last, which holds its newest prefix (LRU, bounded).
        self._memory_size = memory
        self._last: OrderedDict[str, str] = OrderedDict()

    # membership

    def add(self, node: NodeT) -> None:
        if node.name in self._by_name:
            raise ValueError(f"{node.name} is already routed to")
        self._by_name[node.name] = node
        self._groups.setdefault(node.group, set()).add(node.name)
        region = self._regions.get(node.region)
        nodes = {**(region.nodes if region else {}), node.name: node}
        self._regions[node.region] = _Region(nodes, HashRing(nodes, self._vnodes))

    def remove(self, name: str) -> None:
        node = self._by_name.pop(name)
        self._groups[node.group].discard(name)
        self.outliers.forget(name)
        nodes = {k: v for k, v in self._regions[node.region].nodes.items() if k != name}
        if nodes:
            self._regions[node.region] = _Region(nodes, HashRing(nodes, self._vnodes))
        else:
            del self._regions[node.region]

    def __iter__(self) -> Iterator[NodeT]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    # feedback

    def record(self, name: str, outcome: Outcome, now: float) -> None:
        """How a request to `name` went: feeds its breaker."""
        node = self._by_name.get(name)
        if node is not None:
            self.outliers.record(name, outcome, now, self._groups[node.group])

    def hold(self, name: str, until: float) -> None:
        """No new requests to `name` before `until`: it asked for time (Retry-After)."""
        if name in self._by_name:
            self.outliers.hold(name, until)

    def probe(self, name: str, ok: bool, now: float, rtt_ms: float | None = None) -> None:
        """An active health probe of `name`: its breaker, and its region's round-trip time."""
        node = self._by_name.get(name)
        if node is None:
            return
        self.outliers.probe(name, ok, now, self._groups[node.group])
        if ok and rtt_ms is not None:
            self.regions.observe(node.region, rtt_ms)

    # routing

    def route(
        self, key: str, model: str, now: float, *, adapter: str | None = None, exclude: Collection[str] = ()
    ) -> Decision[NodeT] | None:
        """Where a request with routing `key` for `model` goes; None when no replica can serve it."""
        point = stable_hash(key)
        passed: list[tuple[str, str]] = []
        overloaded: tuple[str, _Choice[NodeT]] | None = None
        for region in self.regions.rank(self._regions):
            choice = self._choose(self._regions[region], key, point, model, adapter, exclude, now)
            if choice is None:
                passed.append((region, "unavailable"))
                continue
            if choice.saturated:
                passed.append((region, "saturated"))
                overloaded = overloaded or (region, choice)
                continue
            if passed:
                saturated = any(why == "saturated" for _, why in passed)
                choice.reason = Reason.SATURATED if saturated else Reason.UNAVAILABLE
            return self._decide(key, region, choice, passed, now)
        if overloaded is None:
            return None
        region, choice = overloaded
        choice.reason = Reason.OVERLOADED
        return self._decide(key, region, choice, passed, now)

    def _decide(
        self, key: str, region: str, choice: _Choice[NodeT], passed: list[tuple[str, str]], now: float
    ) -> Decision[NodeT]:
        trial = self.outliers.begin(choice.node.name, now)
        if self._memory_size and choice.reason is not Reason.OVERLOADED:
            self._last[key] = choice.node.name
            self._last.move_to_end(key)
            if len(self._last) > self._memory_size:
                self._last.popitem(last=False)
        return Decision(
            choice.node, choice.node.name, region, key, choice.reason, choice.home, choice.bound, tuple(passed), trial
        )

    def _choose(
        self,
        region: _Region[NodeT],
        key: str,
        point: int,
        model: str,
        adapter: str | None,
        exclude: Collection[str],
        now: float,
    ) -> _Choice[NodeT] | None:
        """Walk the ring from the key's point: the first eligible replica below the load bound."""
        tripped = self.outliers.tripped

        def eligible(node: NodeT) -> bool:
            name = node.name
            return (
                node.available
                and node.serves(model)
                and name not in exclude
                and (name not in tripped or self.outliers.admits(name, now))
            )

        # The bound needs every eligible replica's load; the walk below checks only the few it visits.
        if exclude or tripped:
            loads = [node.load for node in region.nodes.values() if eligible(node)]
        else:
            loads = [node.load for node in region.nodes.values() if node.available and node.serves(model)]
        if not loads:
            return None
        bound = self._bound(sum(loads), len(loads))
        if adapter is not None and not any(node.holds(adapter) and eligible(node) for node in region.nodes.values()):
            adapter = None  # nobody has it loaded: no preference to walk for
        last = region.nodes.get(self._last.get(key, "")) if self._memory_size else None
        if (
            last is not None
            and eligible(last)
            and last.load < bound
            and (last.capacity is None or last.load < last.capacity)
            and (adapter is None or last.holds(adapter))
        ):
            home_name = next(name for name in region.ring.walk(point) if region.nodes[name].serves(model))
            reason = Reason.AFFINITY if last.name == home_name else Reason.RECENT
            return _Choice(last, reason, home_name, bound, saturated=False)
        home: NodeT | None = None  # the key's own replica, whatever its state
        home_eligible = False
        first: NodeT | None = None  # the first eligible one, should all be saturated
        fitting: NodeT | None = None  # the first below the bound, should none hold the adapter
        chosen: NodeT | None = None
        for name in region.ring.walk(point):
            node = region.nodes[name]
            if not eligible(node):
                if home is None and node.serves(model):
                    home = node
                continue
            if home is None:
                home, home_eligible = node, True
            first = first or node
            capacity = node.capacity
            if node.load >= bound or (capacity is not None and node.load >= capacity):
                continue
            if adapter is not None and not node.holds(adapter):
                fitting = fitting or node
                continue
            chosen = node
            break
        # Nobody below the bound holds the adapter: the first below the bound.
        chosen = chosen or fitting
        assert home is not None  # an eligible replica serves the model, so the walk met one
        assert first is not None
        if chosen is None:
            return _Choice(first, Reason.SATURATED, home.name, bound, saturated=True)
        if chosen is home:
            reason = Reason.AFFINITY
        elif adapter is not None and chosen.holds(adapter) and not home.holds(adapter):
            reason = Reason.ADAPTER
        else:
            reason = Reason.SPILL_OVER if home_eligible else Reason.EJECTED
        return _Choice(chosen, reason, home.name, bound, saturated=False)
