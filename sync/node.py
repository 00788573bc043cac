"""One region's registry replica: local operations, deltas from peers, saved on every change.

Everything that changes the state goes through `_apply`: join, save, then tell the
listeners (the peers' outboxes) the delta. Deltas from peers are checked first: a clock too
far ahead is refused (`ClockSkew`), and the clock moves past the rest.
"""

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sync import crdt
from sync.adapters import AdapterRefused, read_version
from sync.blobs import BlobStore
from sync.clock import HybridClock, Timestamp
from sync.crdt import State, Version
from sync.persist import load_state, save_state
from sync.settings import SyncSettings

__all__ = ["ContributionChanged", "EdgeCannotPublish", "SyncNode"]

log = logging.getLogger(__name__)

Listener = Callable[[State], None]


class EdgeCannotPublish(PermissionError):
    """An edge site serves what regions publish; it never publishes or retires."""


class ContributionChanged(RuntimeError):
    """This region's part of a name is not at the sequence a conditional change expected."""


class SyncNode:
    def __init__(self, settings: SyncSettings, *, clock: HybridClock | None = None) -> None:
        self.settings = settings
        self.region = settings.region
        self.clock = clock or HybridClock(settings.region, max_drift_ms=settings.max_drift_ms)
        self.blobs = BlobStore(settings.blobs)
        self._state_path = settings.state / "registry.json"
        self.state = load_state(self._state_path)
        newest = crdt.newest_timestamp(self.state)
        if newest is not None and newest.region == self.region:
            self.clock.observe(newest)  # never issue a timestamp before one of our own saved ones
        self._listeners: list[Listener] = []
        self._digests = crdt.Digests()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _apply(self, delta: State, *, local: bool) -> None:
        """Join `delta`; a local one goes to the listeners (a peer's is not passed on: every
        region pushes its own to all, and anti-entropy repairs the rest)."""
        joined = crdt.join(self.state, delta)
        if joined == self.state:
            return
        self.state = joined
        save_state(self._state_path, self.state)
        if local:
            for listener in self._listeners:
                listener(delta)

    def _writable(self) -> None:
        if self.settings.role == "edge":
            raise EdgeCannotPublish(f"{self.region} is an edge site: it serves adapters, it does not publish them")

    # --- local operations -----------------------------------------------------------------------

    def check(
        self, folder: Path, *, at: Timestamp, base_model: str | None = None, spellings: Sequence[str] = ()
    ) -> Version:
        """The adapter in `folder` as a version, its files stored as blobs; AdapterRefused if
        the engines must not see it. `spellings`: other names of `base_models` (the model
        folders the engines report). Touches only the blob store: safe in a worker thread."""
        self._writable()
        return read_version(
            folder,
            self.blobs,
            base_models=[*self.settings.base_models, *spellings],
            max_rank=self.settings.max_rank,
            base_model=base_model,
            at=at,
        )

    def publish(self, name: str, version: Version, *, weight: float = 1.0, replaces: int | None = None) -> int:
        """This region serves `version` (from `check`) under `name`; the sequence number of its
        part now. With `replaces`, only while its part's sequence is that one (ContributionChanged
        when another publish or withdrawal of this region came between)."""
        self._writable()
        existing = self.state.entries.get(name)
        if existing is not None and version.digest in existing.revoked:
            raise AdapterRefused(f"version {version.digest[:12]} of {name!r} was revoked")
        self._expect(name, replaces)
        self._apply(crdt.publish(self.state, name, version, weight, self.region, self.clock.now()), local=True)
        log.info("published %s version %s (weight %s)", name, version.digest[:12], weight)
        return self.sequence(name)

    def withdraw(self, name: str, seq: int | None = None) -> None:
        """This region stops contributing to `name` (the other regions' parts stay served):
        with `seq`, only while its part's sequence is that one (ContributionChanged otherwise).
        crdt.Unknown when this region serves no part of it."""
        self._writable()
        entry = self.state.entries.get(name)
        mine = entry.contributions.get(self.region) if entry is not None else None
        if entry is None or mine is None or mine.version is None or mine.dot in entry.removes:
            raise crdt.Unknown(name)
        self._expect(name, seq)
        self._apply(crdt.withdraw(self.state, name, self.region, self.clock.now()), local=True)
        log.info("withdrew this region's part of %s", name)

    def sequence(self, name: str) -> int:
        """The sequence number of this region's part of `name`: each publish or withdrawal here
        adds one (0: never one)."""
        entry = self.state.entries.get(name)
        mine = entry.contributions.get(self.region) if entry is not None else None
        return mine.seq if mine is not None else 0

    def _expect(self, name: str, seq: int | None) -> None:
        """ContributionChanged unless this region's part is at `seq` and no retire removed it
        (a retire keeps the sequence: a change conditional on it must not bring the name back)."""
        if seq is None:
            return
        entry = self.state.entries.get(name)
        mine = entry.contributions.get(self.region) if entry is not None else None
        if entry is not None and mine is not None and mine.dot in entry.removes:
            raise ContributionChanged(f"this region's part of {name[:200]!r} was retired")
        if self.sequence(name) != seq:
            raise ContributionChanged(
                f"this region's part of {name[:200]!r} is at sequence {self.sequence(name)}, not {seq}"
            )

    def retire(self, name: str) -> None:
        self._writable()
        self._apply(crdt.retire(self.state, name, self.region, self.clock.now()), local=True)
        log.info("retired %s", name)

    def revoke(self, name: str, digest: str) -> None:
        self._writable()
        self._apply(crdt.revoke(self.state, name, digest, self.region, self.clock.now()), local=True)
        log.info("revoked %s version %s", name, digest[:12])

    # --- peers ------------------------------------------------------------------------------------

    def receive(self, delta: State) -> None:
        """A peer's delta or anti-entropy answer; ClockSkew when its clock is too far ahead."""
        newest = crdt.newest_timestamp(delta)
        if newest is not None:
            self.clock.observe(newest)
        self._apply(delta, local=False)

    def summary(self) -> dict[str, str]:
        return crdt.summary(self.state, self._digests)

    def differing(self, theirs: dict[str, str]) -> State:
        return crdt.differing(self.state, theirs, self.summary())

    # --- reading ----------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """Every adapter: its versions, each region's contribution, and what is served."""
        return [_describe(self.state, name, entry) for name, entry in sorted(self.state.entries.items())]


def _describe(state: State, name: str, entry: crdt.Entry) -> dict[str, Any]:
    versions = sorted(entry.versions.values(), key=lambda v: (v.at, v.digest))
    recipe = crdt.recipe(state, name)
    return {
        "name": name,
        "live": entry.live,
        "versions": [
            {
                "digest": v.digest,
                "base_model": v.base_model,
                "rank": v.rank,
                "revoked": v.digest in entry.revoked,
                "published_by": v.at.region,
            }
            for v in versions
        ],
        "contributions": {
            region: {"version": c.version, "weight": c.weight, "seq": c.seq, "live": c.dot not in entry.removes}
            for region, c in sorted(entry.contributions.items())
        },
        "served": None
        if recipe is None
        else {
            "digest": recipe.digest,
            "base_model": recipe.base_model,
            "parts": [[p.region, p.version, p.weight] for p in recipe.parts],
        },
    }
