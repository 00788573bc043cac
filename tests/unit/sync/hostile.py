"""Hostile input for the sidecar in process, and the checks every answer to it must pass.

A valid delta with every part a peer sends (`VALID`), ways to break one part of it (`broken`),
JSON that `json.dumps` will not write (`Raw`: NaN, nesting deeper than Python), and strategies
for hostile values. An answer is `answered` when a refusal is a 4xx in the OpenAI envelope that
changed neither the registry nor (from a peer) the clock, an acceptance left a state that reads
back from disk, and the sidecar still serves.
"""

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from fastapi.testclient import TestClient
from hypothesis import strategies as st

from harness.fake_nodes import FakeIssuer
from sync import crdt
from sync.clock import Timestamp
from sync.crdt import FileRef, State, Version
from sync.node import SyncNode
from sync.persist import load_state

__all__ = [
    "ACTIONS",
    "HOSTILE_TEXT",
    "PATHS",
    "VALID",
    "Answer",
    "Raw",
    "answered",
    "broken",
    "deep",
    "dumps",
    "hostile",
    "json_values",
    "peer_headers",
    "refusal",
    "still_serves",
    "version",
]

_ENVELOPE = {"message", "type", "param", "code"}


def version(seed: int, region: str) -> Version:
    """A version whose files need not exist (the registry never reads them)."""
    files = tuple(
        FileRef(name, 100 * seed + size, hashlib.sha256(f"{name}{seed}".encode()).hexdigest())
        for name, size in (("adapter_config.json", 1), ("adapter_model.safetensors", 2))
    )
    return Version(crdt.manifest_digest(files), "switchyard-tiny-v1", 8, files, Timestamp(1_000 + seed, 0, region))


def _valid_delta() -> dict[str, Any]:
    """A delta with every part a peer sends: adds and removes, versions, a revocation, a live
    contribution and a withdrawn one, a retire, the dots."""
    state, wall = State(), 2_000

    def apply(delta: State) -> None:
        nonlocal state
        state = crdt.join(state, delta)

    for step, (op, region) in enumerate([("publish", "b"), ("publish", "c"), ("withdraw", "c"), ("revoke", "b")]):
        at = Timestamp(wall + step, 0, region)
        if op == "publish":
            apply(crdt.publish(state, "seeded", version(step + 1, region), 1.5, region, at))
        elif op == "withdraw":
            apply(crdt.withdraw(state, "seeded", region, at))
        else:
            apply(crdt.revoke(state, "seeded", version(2, "c").digest, region, at))
    apply(crdt.publish(state, "gone", version(7, "d"), 0.5, "d", Timestamp(wall + 10, 0, "d")))
    apply(crdt.retire(state, "gone", "b", Timestamp(wall + 11, 0, "b")))
    return crdt.encode(state)


VALID = _valid_delta()


class Raw:
    """JSON text put in place as it is (what `json.dumps` will not write): NaN, deep nesting."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}... {len(self.text)} characters)"


def dumps(value: Any) -> bytes:
    raws: list[str] = []

    def placeholder(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value.text)
            return f"\x00raw{len(raws) - 1}\x00"
        if isinstance(value, dict):
            return {k: placeholder(v) for k, v in value.items()}
        if isinstance(value, list):
            return [placeholder(v) for v in value]
        return value

    text = json.dumps(placeholder(value))
    for number, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{number}\x00"), raw)
    return text.encode("utf-8", "surrogatepass")


def deep(depth: int) -> Raw:
    return Raw("[" * depth + "0" + "]" * depth)


HOSTILE_NUMBERS = [-1, 0, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400, 1.5, -0.0, 1e308, 101, True]
HOSTILE_TEXT = ["", "\ud800", "x" * 5000, "../../etc/passwd", "a\x00b", "ü" * 300, "name@digest", " b"]
HOSTILE_RAW = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1" * 5000), deep(3_000), deep(100_000)]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
hostile: st.SearchStrategy[Any] = (
    st.sampled_from([None, [], {}, [[]], {"a": {}}, *HOSTILE_NUMBERS, *HOSTILE_TEXT, *HOSTILE_RAW])
    | st.integers()
    | st.text(max_size=80)
    | json_values
)


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*at, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, (*at, index))


PATHS = [path for path in _paths(VALID) if path]
ACTIONS = ("replace", "remove", "rename", "wrap", "repeat")


def broken(path: tuple[Any, ...], action: str, value: Any) -> Any:
    """The valid delta with the part at `path` replaced by `value`, removed, renamed to `value`,
    wrapped in a list or repeated."""
    delta = json.loads(json.dumps(VALID))
    *parent_path, last = path
    parent = delta
    for step in parent_path:
        parent = parent[step]
    if action == "replace":
        parent[last] = value
    elif action == "remove":
        del parent[last]
    elif action == "rename" and isinstance(parent, dict):
        parent[value if isinstance(value, str) else json.dumps(value)] = parent.pop(last)
    elif action == "wrap":
        parent[last] = [parent[last]]
    elif isinstance(parent, list):
        parent.append(parent[last])
    else:
        parent[f"{last}-extra"] = parent[last]
    return delta


def peer_headers(issuer: FakeIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.peer_key}", "content-type": "application/json"}


class Answer(Protocol):
    """A response, from the test client or from httpx."""

    status_code: int

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self, **kwargs: Any) -> Any: ...


def refusal(response: Answer) -> dict[str, Any]:
    """A 4xx in the OpenAI envelope (a 5xx fails the test)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == _ENVELOPE, error
    assert isinstance(error["message"], str)
    assert error["type"] == "invalid_request_error"
    return error


def answered(
    client: TestClient,
    node: SyncNode,
    issuer: FakeIssuer,
    method: str,
    path: str,
    *,
    serves: bool = True,
    **request: Any,
) -> Answer:
    """The answer to the request, checked: a refusal left the registry (and, from a peer, the clock)
    as it was, an acceptance left a state that reads back from disk; either way the sidecar still serves."""
    state, clock = node.state, node.clock.last
    response = client.request(method, path, **request)
    if response.status_code >= 300:
        refusal(response)
        assert node.state is state
        if path.startswith("/sync/"):  # (a local write reads the clock, which moves it to the present)
            assert node.clock.last == clock  # a refused peer's timestamps moved nothing
    else:
        assert load_state(node.settings.state / "registry.json") == node.state
    if serves:
        still_serves(client, node, issuer)
    return response


def still_serves(client: TestClient, node: SyncNode, issuer: FakeIssuer) -> None:
    peer = peer_headers(issuer)
    summary = client.post("/sync/summary", json={"region": "b", "summary": {}}, headers=peer)
    assert summary.status_code == 200, summary.text
    assert crdt.decode(summary.json()["delta"]) == node.state
    assert client.get("/adapters").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.post("/sync/delta", content=dumps(VALID), headers=peer).status_code == 200
