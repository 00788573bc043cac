"""The sidecar's Prometheus metrics, read from the live node and peers at scrape time."""

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from sync import crdt
from sync.node import SyncNode
from sync.peers import Peers
from sync.reconcile import STAGING_SEPARATOR, Reconciler

__all__ = ["SyncMetrics"]


class SyncMetrics(Collector):
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._node: SyncNode | None = None
        self._peers: Peers | None = None
        self._reconciler: Reconciler | None = None

    def watch(self, node: SyncNode, peers: Peers, reconciler: Reconciler) -> None:
        self._node, self._peers, self._reconciler = node, peers, reconciler

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        if self._node is None or self._peers is None or self._reconciler is None:
            return
        state, peers, now = self._node.state, self._peers, time.monotonic()
        served = sum(crdt.recipe(state, name) is not None for name in state.entries)
        adapters = GaugeMetricFamily("sync_adapters", "Adapter names served (a recipe to load).")
        adapters.add_metric([], served)
        yield adapters
        rounds = CounterMetricFamily("sync_rounds", "Anti-entropy rounds run.")
        rounds.add_metric([], peers.rounds)
        yield rounds
        sent = CounterMetricFamily("sync_sent_bytes", "Bytes sent to peers (deltas, digests).")
        sent.add_metric([], peers.bytes_sent)
        yield sent
        received = CounterMetricFamily("sync_received_bytes", "Bytes received from peers (answers, blobs).")
        received.add_metric([], peers.bytes_received)
        yield received
        up = GaugeMetricFamily("sync_peer_up", "Whether the peer answered last time.", labels=["peer"])
        in_sync = GaugeMetricFamily(
            "sync_peer_in_sync", "Whether the last round with the peer found nothing to exchange.", labels=["peer"]
        )
        lag = GaugeMetricFamily(
            "sync_lag_seconds", "Time since the last complete anti-entropy round with the peer.", labels=["peer"]
        )
        for peer in peers.peers:
            up.add_metric([peer.url], float(peer.up))
            in_sync.add_metric([peer.url], float(peer.in_sync))
            if peer.last_synced is not None:
                lag.add_metric([peer.url], now - peer.last_synced)
        yield from (up, in_sync, lag)
        passes = CounterMetricFamily("sync_reconcile_passes", "Passes of the hot-loading loop.")
        passes.add_metric([], self._reconciler.passes)
        yield passes
        loaded = GaugeMetricFamily(
            "sync_engine_adapters", "Adapters loaded from this sidecar, per local engine.", labels=["engine"]
        )
        engine_up = GaugeMetricFamily("sync_engine_up", "Whether the local engine answered.", labels=["engine"])
        for engine in self._reconciler.engines:
            loaded.add_metric([engine.url], sum(STAGING_SEPARATOR not in name for name in engine.loaded))
            engine_up.add_metric([engine.url], float(engine.up))
        yield from (loaded, engine_up)
