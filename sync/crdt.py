"""The adapter registry as a state-based CRDT shipped in deltas (README: the sync sidecar). Pure: no I/O.

Per adapter name, an `Entry`:
- `adds` / `removes`: an observed-remove set of dots (region, counter). The adapter exists
  while some add is not removed; retiring removes the adds (and contributions) it has seen,
  so a publish the retiring region had not seen survives it: publish wins.
- `versions`: grow-only, by content digest (sha256 of the canonical manifest of the
  adapter's files), each with its base model and rank.
- `revoked`: grow-only digests that are never served again.
- `contributions`: one slot per region, written only by that region; the higher sequence
  wins. A contribution carries a dot too, so a retire removes the contributions it saw.

Every mutator returns a delta (a small `State`) that the caller joins into its own state and
ships to peers. `join` is commutative, associative and idempotent (tests/unit/sync/test_crdt.py
checks it with hypothesis), so deltas may arrive late, twice or never: anti-entropy
(`summary` / `differing`: digests of 256 buckets of names, then the entries of the buckets
that differ) repairs what was lost. Hybrid-logical timestamps only order the
audit log and break ties.

What a region serves under a name is the `Recipe`: every region's live contribution, in
region order, stacked (sync/merge.py), so every region computes the same weights.
"""

import hashlib
import json
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sync.clock import Timestamp

__all__ = [
    "MAX_WEIGHT",
    "NAME",
    "Contribution",
    "Entry",
    "FileRef",
    "Malformed",
    "Part",
    "Recipe",
    "State",
    "Unknown",
    "Version",
    "audit",
    "Digests",
    "bucket",
    "decode",
    "differing",
    "encode",
    "join",
    "manifest_digest",
    "newest_timestamp",
    "publish",
    "recipe",
    "retire",
    "revoke",
    "summary",
    "withdraw",
]

Dot = tuple[str, int]  # (region, counter): one event of one region
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Malformed(ValueError):
    """An encoded state that is not one (`decode`): a peer's or a client's, never trusted."""


class Unknown(KeyError):
    """No live adapter, contribution or version by that name to retire, withdraw or revoke."""


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class FileRef:
    path: str
    size: int
    sha256: str


def manifest_digest(files: Iterable[FileRef]) -> str:
    """The version's identity: sha256 of its files' (path, size, sha256), sorted by path."""
    rows = sorted([f.path, f.size, f.sha256] for f in files)
    return hashlib.sha256(_canonical(rows)).hexdigest()


@dataclass(frozen=True, slots=True)
class Version:
    digest: str
    base_model: str
    rank: int
    files: tuple[FileRef, ...]
    at: Timestamp  # first published: when, and by which region


@dataclass(frozen=True, slots=True)
class Contribution:
    seq: int
    version: str | None  # None: the region withdrew its contribution
    weight: float
    dot: Dot
    at: Timestamp


@dataclass(frozen=True, slots=True)
class Entry:
    adds: frozenset[Dot] = frozenset()
    removes: frozenset[Dot] = frozenset()
    versions: Mapping[str, Version] = field(default_factory=dict)
    revoked: Mapping[str, Timestamp] = field(default_factory=dict)
    contributions: Mapping[str, Contribution] = field(default_factory=dict)
    retired: Mapping[Dot, Timestamp] = field(default_factory=dict)  # each retire, for the audit log

    @property
    def live(self) -> bool:
        return not self.adds <= self.removes


@dataclass(frozen=True, slots=True)
class State:
    entries: Mapping[str, Entry] = field(default_factory=dict)
    dots: Mapping[str, int] = field(default_factory=dict)  # the highest counter seen per region


# --- join --------------------------------------------------------------------------------


def _later(a: Contribution, b: Contribution) -> Contribution:
    """The slot's winner: higher sequence, then later timestamp, then the larger encoding
    (only a region that lost its state and reused a sequence gets that far)."""
    return max(a, b, key=lambda c: (c.seq, c.at, _canonical(_contribution(c))))


def _first(a: Version, b: Version) -> Version:
    return min(a, b, key=lambda v: (v.at, _canonical(_version(v))))


def _merge_maps(a: Mapping[Any, Any], b: Mapping[Any, Any], pick: Any) -> dict[Any, Any]:
    merged = dict(a)
    for key, value in b.items():
        mine = merged.get(key)
        merged[key] = value if mine is None else pick(mine, value)
    return merged


def _join_entry(a: Entry, b: Entry) -> Entry:
    return Entry(
        adds=a.adds | b.adds,
        removes=a.removes | b.removes,
        versions=_merge_maps(a.versions, b.versions, _first),
        revoked=_merge_maps(a.revoked, b.revoked, min),
        contributions=_merge_maps(a.contributions, b.contributions, _later),
        retired=_merge_maps(a.retired, b.retired, min),
    )


def join(a: State, b: State) -> State:
    entries = _merge_maps(a.entries, b.entries, _join_entry)
    return State(entries, _merge_maps(a.dots, b.dots, max))


# --- mutators: each returns the delta ------------------------------------------------------


def _next_dot(state: State, region: str) -> Dot:
    return region, state.dots.get(region, 0) + 1


def _delta(name: str, entry: Entry, dot: Dot) -> State:
    return State({name: entry}, {dot[0]: dot[1]})


def _contribution_of(state: State, name: str, region: str) -> Contribution | None:
    entry = state.entries.get(name)
    return entry.contributions.get(region) if entry else None


def publish(state: State, name: str, version: Version, weight: float, region: str, at: Timestamp) -> State:
    """`region` serves `version` under `name`, with `weight` in the stack (re-adding a retired name)."""
    if version.digest != manifest_digest(version.files):
        raise ValueError("the version's digest is not its manifest's")
    add = _next_dot(state, region)
    contribution_dot = (region, add[1] + 1)
    previous = _contribution_of(state, name, region)
    seq = previous.seq + 1 if previous else 1
    contribution = Contribution(seq, version.digest, weight, contribution_dot, at)
    entry = Entry(adds=frozenset({add}), versions={version.digest: version}, contributions={region: contribution})
    return _delta(name, entry, contribution_dot)


def withdraw(state: State, name: str, region: str, at: Timestamp) -> State:
    """`region` stops contributing to `name` (the others' contributions stay served)."""
    previous = _contribution_of(state, name, region)
    if previous is None:
        raise Unknown(name)
    dot = _next_dot(state, region)
    contribution = Contribution(previous.seq + 1, None, 0.0, dot, at)
    return _delta(name, Entry(contributions={region: contribution}), dot)


def retire(state: State, name: str, region: str, at: Timestamp) -> State:
    """Remove `name` as this region sees it: its adds and contributions, not ones it has not seen."""
    entry = state.entries.get(name)
    if entry is None or not entry.live:
        raise Unknown(name)
    dot = _next_dot(state, region)
    seen = entry.adds | {c.dot for c in entry.contributions.values()}
    return _delta(name, Entry(removes=frozenset(seen), retired={dot: at}), dot)


def revoke(state: State, name: str, digest: str, region: str, at: Timestamp) -> State:
    """Never serve version `digest` of `name` again, in any region's contribution."""
    entry = state.entries.get(name)
    if entry is None or digest not in entry.versions:
        raise Unknown(f"{name}@{digest}")
    dot = _next_dot(state, region)
    return _delta(name, Entry(revoked={digest: at}), dot)


# --- what is served --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Part:
    region: str
    version: str
    weight: float


@dataclass(frozen=True, slots=True)
class Recipe:
    """What `name` serves: the parts to stack, in region order, on `base_model`."""

    name: str
    base_model: str
    parts: tuple[Part, ...]

    @property
    def digest(self) -> str:
        rows = [[p.region, p.version, p.weight] for p in self.parts]
        return hashlib.sha256(_canonical([self.name, self.base_model, rows])).hexdigest()


def recipe(state: State, name: str) -> Recipe | None:
    """The recipe for `name`, or None when it is retired or nothing of it can be served.

    A contribution counts when it is live (not removed by a retire), names a version this
    state knows and nobody revoked, and has a weight. If contributions disagree on the base
    model, the base of the earliest published version wins and the others wait."""
    entry = state.entries.get(name)
    if entry is None or not entry.live:
        return None
    candidates = [
        (region, c)
        for region, c in sorted(entry.contributions.items())
        if c.version is not None
        and c.dot not in entry.removes
        and c.version in entry.versions
        and c.version not in entry.revoked
        and c.weight != 0
    ]
    if not candidates:
        return None
    versions = [entry.versions[c.version] for _, c in candidates if c.version]
    base = min(versions, key=lambda v: (v.at, v.digest)).base_model
    parts = tuple(
        Part(region, c.version, c.weight)
        for region, c in candidates
        if c.version and entry.versions[c.version].base_model == base
    )
    return Recipe(name, base, parts)


def audit(state: State, name: str) -> list[tuple[Timestamp, str]]:
    """What happened to `name`, in timestamp order: publishes, withdrawals, retires, revocations."""
    entry = state.entries.get(name)
    if entry is None:
        return []
    events = [(v.at, f"version {v.digest[:12]} published by {v.at.region}") for v in entry.versions.values()]
    for region, c in entry.contributions.items():
        what = f"serves {c.version[:12]} at weight {c.weight}" if c.version else "withdrew"
        events.append((c.at, f"{region} {what} (seq {c.seq})"))
    events += [(at, f"retired by {dot[0]}") for dot, at in entry.retired.items()]
    events += [(at, f"version {digest[:12]} revoked by {at.region}") for digest, at in entry.revoked.items()]
    return sorted(events)


# --- anti-entropy ----------------------------------------------------------------------------


def entry_digest(entry: Entry) -> str:
    return hashlib.sha256(_canonical(_entry(entry))).hexdigest()


class Digests:
    """Entry digests, remembered while the entry object is unchanged (entries are immutable:
    a join makes a new one), so a round costs a hash only for what changed since the last."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[Entry, str]] = {}

    def __call__(self, name: str, entry: Entry) -> str:
        known = self._known.get(name)
        if known is not None and known[0] is entry:
            return known[1]
        digest = entry_digest(entry)
        self._known[name] = (entry, digest)
        return digest


def bucket(name: str) -> str:
    """Which of 256 buckets a name falls in (the first byte of its sha256, in hex)."""
    return hashlib.sha256(name.encode()).hexdigest()[:2]


def summary(state: State, digests: Callable[[str, Entry], str] | None = None) -> dict[str, str]:
    """A digest per non-empty bucket of entries: what a peer compares to find what differs.
    At most 256 short lines, however many adapters: a round between peers in sync costs a
    few kilobytes, and a difference costs the entries of the buckets where it lies."""
    digest_of = digests or (lambda _, entry: entry_digest(entry))
    rows: dict[str, list[str]] = {}
    for name in sorted(state.entries):
        rows.setdefault(bucket(name), []).append(f"{name}\x1f{digest_of(name, state.entries[name])}")
    return {b: hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32] for b, lines in rows.items()}


def differing(state: State, theirs: Mapping[str, str], summary_here: Mapping[str, str] | None = None) -> State:
    """The entries of the buckets where a peer with summary `theirs` differs, as a delta."""
    ours = summary(state) if summary_here is None else summary_here
    entries = {name: e for name, e in state.entries.items() if theirs.get(bucket(name)) != ours.get(bucket(name))}
    return replace(state, entries=entries)


def newest_timestamp(state: State) -> Timestamp | None:
    """The latest timestamp in `state` (to refuse a peer's clock far in the future)."""
    stamps = [
        at
        for entry in state.entries.values()
        for at in (
            *(v.at for v in entry.versions.values()),
            *(c.at for c in entry.contributions.values()),
            *entry.revoked.values(),
            *entry.retired.values(),
        )
    ]
    return max(stamps, default=None)


# --- encoding (the wire and the disk) ------------------------------------------------------------


def _contribution(c: Contribution) -> dict[str, Any]:
    return {"seq": c.seq, "version": c.version, "weight": c.weight, "dot": list(c.dot), "at": c.at.encode()}


def _version(v: Version) -> dict[str, Any]:
    return {
        "digest": v.digest,
        "base_model": v.base_model,
        "rank": v.rank,
        "files": [[f.path, f.size, f.sha256] for f in v.files],
        "at": v.at.encode(),
    }


def _entry(e: Entry) -> dict[str, Any]:
    return {
        "adds": sorted(list(d) for d in e.adds),
        "removes": sorted(list(d) for d in e.removes),
        "versions": {digest: _version(v) for digest, v in e.versions.items()},
        "revoked": {digest: at.encode() for digest, at in e.revoked.items()},
        "contributions": {region: _contribution(c) for region, c in e.contributions.items()},
        "retired": sorted([list(dot), at.encode()] for dot, at in e.retired.items()),
    }


def encode(state: State) -> dict[str, Any]:
    return {"entries": {name: _entry(e) for name, e in state.entries.items()}, "dots": dict(state.dots)}


# Decoding takes nothing on trust (peers send it): exact JSON types, never a conversion; names,
# regions and digests as this code makes them; integers that fit JSON's int64 and finite weights
# in the API's bounds. A value that passed here can always be encoded, summarized, saved and read
# back: one that could not would stop anti-entropy, the API's listings or the next start.
_INT_MAX = 2**63 - 1
MAX_WEIGHT = 100.0
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,140}")  # the API's names, and `@` (refused by the reconciler)
_REGION = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TEXT = re.compile(r"[^\x00-\x1f\x7f\ud800-\udfff]{1,1024}")  # printable, and encodable as UTF-8


def _show(value: Any) -> str:
    return reprlib.repr(value)  # bounded in length and depth, whatever a peer nests


def _int(value: Any, what: str, low: int = 0) -> int:
    if type(value) is not int or not low <= value <= _INT_MAX:
        raise Malformed(f"{what}: not an integer from {low} to 2^63-1: {_show(value)}")
    return value


def _str(value: Any, what: str, pattern: re.Pattern[str]) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise Malformed(f"{what}: not a valid {what}: {_show(value)}")
    return value


def _map(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what}: not an object: {_show(value)}")
    return value


def _list(value: Any, what: str, length: int | None = None) -> list[Any]:
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise Malformed(f"{what}: not a list{f' of {length}' if length else ''}: {_show(value)}")
    return value


def _field(value: dict[str, Any], key: str) -> Any:
    if key not in value:
        raise Malformed(f"no {key!r}")
    return value[key]


def _timestamp(value: Any) -> Timestamp:
    wall_ms, logical, region = _list(value, "timestamp", 3)
    return Timestamp(_int(wall_ms, "timestamp"), _int(logical, "timestamp"), _str(region, "region", _REGION))


def _dot(value: Any) -> Dot:
    region, counter = _list(value, "dot", 2)
    return _str(region, "region", _REGION), _int(counter, "dot", low=1)


def _digest(value: Any) -> str:
    return _str(value, "digest", _SHA256)


def _decode_version(key: str, value: Any) -> Version:
    value = _map(value, "version")
    files = tuple(FileRef(*_list(row, "file", 3)) for row in _list(_field(value, "files"), "files"))
    for ref in files:  # names inside one folder: never a path out of it
        if not (isinstance(ref.path, str) and _FILE_NAME.fullmatch(ref.path) and isinstance(ref.sha256, str)
                and _SHA256.fullmatch(ref.sha256)):  # fmt: skip
            raise Malformed(f"not a file of an adapter: {_show(ref)}")
        _int(ref.size, "file size")
    if not files or len({ref.path for ref in files}) != len(files):
        raise Malformed(f"version {_show(key)}: not one file per name")
    version = Version(_digest(_field(value, "digest")), _str(_field(value, "base_model"), "base model", _TEXT),
                      _int(_field(value, "rank"), "rank", low=1), files, _timestamp(_field(value, "at")))  # fmt: skip
    if version.digest != manifest_digest(files) or key != version.digest:
        raise Malformed(f"version {version.digest[:12]}: the digest is not its manifest's")
    return version


def _decode_contribution(region: str, value: Any) -> Contribution:
    value = _map(value, "contribution")
    version, weight = _field(value, "version"), _field(value, "weight")
    if type(weight) not in (int, float) or not 0 <= weight <= MAX_WEIGHT:  # NaN fails the comparison too
        raise Malformed(f"weight: not a number from 0 to {MAX_WEIGHT:g}: {_show(weight)}")
    dot = _dot(_field(value, "dot"))
    if dot[0] != region:  # a region writes only its own slot
        raise Malformed(f"a contribution of {region} with a dot of {_show(dot[0])}")
    return Contribution(_int(_field(value, "seq"), "seq", low=1), None if version is None else _digest(version),
                        float(weight), dot, _timestamp(_field(value, "at")))  # fmt: skip


def _decode_entry(value: Any) -> Entry:
    value = _map(value, "entry")
    return Entry(
        adds=frozenset(_dot(d) for d in _list(_field(value, "adds"), "adds")),
        removes=frozenset(_dot(d) for d in _list(_field(value, "removes"), "removes")),
        versions={_digest(k): _decode_version(k, v) for k, v in _map(_field(value, "versions"), "versions").items()},
        revoked={_digest(k): _timestamp(v) for k, v in _map(_field(value, "revoked"), "revoked").items()},
        contributions={
            _str(k, "region", _REGION): _decode_contribution(k, v)
            for k, v in _map(_field(value, "contributions"), "contributions").items()
        },
        retired={
            _dot(dot): _timestamp(at)
            for dot, at in (_list(r, "retire", 2) for r in _list(_field(value, "retired"), "retired"))
        },
    )


def decode(value: Any) -> State:
    """A state from its encoding; Malformed for anything malformed (peers are not trusted)."""
    try:
        value = _map(value, "registry state")
        entries = {
            _str(name, "name", NAME): _decode_entry(e) for name, e in _map(_field(value, "entries"), "entries").items()
        }
        dots = {
            _str(region, "region", _REGION): _int(n, "dot", low=1)
            for region, n in _map(_field(value, "dots"), "dots").items()
        }
    except Malformed as exc:
        raise Malformed(f"malformed registry state: {exc}") from None
    return State(entries, dots)
