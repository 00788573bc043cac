"""Hostile bodies to the sidecar's peer and write routes, with valid credentials, in process:
a valid delta with one part broken (a wrong type, a missing or extra field, a huge or negative
number, NaN, a lone surrogate, JSON nested thousands deep, a CRDT entry of the wrong shape),
arbitrary JSON, arbitrary bytes, publish fields and uploads of every wrong kind. Never a 5xx,
every error in the OpenAI envelope, a refused request changes neither the registry nor (from a
peer) the clock, and whatever was accepted can still be summarized, listed, saved and read
back. Then blob ranges, a peer's bad answers to anti-entropy (the rounds go on), the
framework's own errors (404, 405, 422, a bug) in the envelope with a bug logged once, and a
real `python -m sync` answering the worst bodies without a traceback in its log."""

import asyncio
import hashlib
import json
import logging
import urllib.parse
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import ClientDisconnect

from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from sync import crdt
from sync.app import create_app
from sync.clock import Timestamp
from sync.crdt import FileRef, State, Version
from sync.node import SyncNode
from sync.peers import Peers
from sync.persist import load_state
from sync.settings import SyncSettings

ENVELOPE = {"message", "type", "param", "code"}


def _version(seed: int, region: str) -> Version:
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
            apply(crdt.publish(state, "seeded", _version(step + 1, region), 1.5, region, at))
        elif op == "withdraw":
            apply(crdt.withdraw(state, "seeded", region, at))
        else:
            apply(crdt.revoke(state, "seeded", _version(2, "c").digest, region, at))
    apply(crdt.publish(state, "gone", _version(7, "d"), 0.5, "d", Timestamp(wall + 10, 0, "d")))
    apply(crdt.retire(state, "gone", "b", Timestamp(wall + 11, 0, "b")))
    return crdt.encode(state)


VALID = _valid_delta()


class Raw:
    """JSON text put in place as it is (what `json.dumps` will not write): NaN, deep nesting."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text[:40]!r}... {len(self.text)} characters)"


def _dumps(value: Any) -> bytes:
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


def _deep(depth: int) -> Raw:
    return Raw("[" * depth + "0" + "]" * depth)


HOSTILE_NUMBERS = [-1, 0, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400, 1.5, -0.0, 1e308, 101, True]
HOSTILE_TEXT = ["", "\ud800", "x" * 5000, "../../etc/passwd", "a\x00b", "ü" * 300, "name@digest", " b"]
HOSTILE_RAW = [Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1" * 5000), _deep(3_000), _deep(100_000)]
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


def _broken(path: tuple[Any, ...], action: str, value: Any) -> Any:
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


# Each part of the delta gets each of these: the wrong type, a bound just past, a number no
# int64 holds, text no name is, what JSON itself has no value for, nesting deeper than Python.
SWEEP: list[Any] = [None, True, -1, 0, 2**63, 10**400, 1.5, 101, "", "\ud800", "x" * 300, [], {}, ["b", 1]]
SWEEP += [Raw("NaN"), Raw("Infinity"), _deep(5_000)]


@st.composite
def broken_deltas(draw: st.DrawFn) -> Any:
    action = draw(st.sampled_from(ACTIONS))
    value = draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=70) if action == "rename" else hostile)
    return _broken(draw(st.sampled_from(PATHS)), action, value)


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> FakeIssuer:
    return FakeIssuer(tmp_path_factory.mktemp("input-issuer"))


@pytest.fixture(scope="module")
def settings(issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory) -> SyncSettings:
    return SyncSettings(
        data_dir=tmp_path_factory.mktemp("input-data"),
        auth_issuer=issuer.issuer,
        auth_jwks=str(issuer.jwks),
        peer_key=issuer.peer_key,
    )


@pytest.fixture(scope="module")
def app(settings: SyncSettings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="module")
def node(app: FastAPI) -> SyncNode:
    found: SyncNode = app.state.node
    return found


@pytest.fixture(scope="module")
def client(app: FastAPI, issuer: FakeIssuer) -> Iterator[TestClient]:
    with TestClient(app) as client:  # an exception that escapes the app fails the test
        seeded = client.post("/sync/delta", content=_dumps(VALID), headers=_peer(issuer))
        assert seeded.status_code == 200, seeded.text
        yield client


def _peer(issuer: FakeIssuer) -> dict[str, str]:
    return {"authorization": f"Bearer {issuer.peer_key}", "content-type": "application/json"}


class Answer(Protocol):
    """A response, from the test client or from httpx."""

    status_code: int

    @property
    def text(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def json(self, **kwargs: Any) -> Any: ...


def _refusal(response: Answer) -> dict[str, Any]:
    """A 4xx in the OpenAI envelope (a 5xx fails the test)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == ENVELOPE, error
    assert isinstance(error["message"], str)
    assert error["type"] == "invalid_request_error"
    return error


def _answered(
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
        _refusal(response)
        assert node.state is state
        if path.startswith("/sync/"):  # (a local write reads the clock, which moves it to the present)
            assert node.clock.last == clock  # a refused peer's timestamps moved nothing
    else:
        assert load_state(node.settings.state / "registry.json") == node.state
    if serves:
        _still_serves(client, node, issuer)
    return response


def _still_serves(client: TestClient, node: SyncNode, issuer: FakeIssuer) -> None:
    peer = _peer(issuer)
    summary = client.post("/sync/summary", json={"region": "b", "summary": {}}, headers=peer)
    assert summary.status_code == 200, summary.text
    assert crdt.decode(summary.json()["delta"]) == node.state
    assert client.get("/adapters").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.post("/sync/delta", content=_dumps(VALID), headers=peer).status_code == 200


def test_every_part_of_a_delta_broken_every_way_is_refused_or_joined_whole(
    client: TestClient, node: SyncNode, issuer: FakeIssuer
) -> None:
    cases = [(path, "replace", value) for path in PATHS for value in SWEEP]
    cases += [(path, action, "x") for path in PATHS for action in ACTIONS[1:]]
    for number, (path, action, value) in enumerate(cases):
        body = _dumps(_broken(path, action, value))
        serves = number % 50 == 0  # (every answer's state is checked; serving, now and then and at the end)
        _answered(client, node, issuer, "POST", "/sync/delta", content=body, headers=_peer(issuer), serves=serves)
    _still_serves(client, node, issuer)


@given(delta=broken_deltas())
def test_a_broken_delta_is_refused_in_the_envelope_or_joined_whole(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, delta: Any
) -> None:
    _answered(client, node, issuer, "POST", "/sync/delta", content=_dumps(delta), headers=_peer(issuer))


@given(body=json_values | hostile | st.builds(lambda e: {"entries": e, "dots": {}}, hostile))
def test_any_json_to_a_peer_route_is_refused_or_answered(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, body: Any
) -> None:
    for path, sent in (("/sync/delta", body), ("/sync/summary", body), ("/sync/summary", {"summary": body})):
        _answered(client, node, issuer, "POST", path, content=_dumps(sent), headers=_peer(issuer))


RAW_BODIES = {  # by name: hypothesis shows a failing example, and these are too long to show
    "empty": b"",
    "not UTF-8": b"\xff\xfe",
    "a BOM": b"\xef\xbb\xbf{}",
    "200,000 brackets": b"[" * 200_000,
    "50,000 open objects": b'{"entries":' * 50_000,
    "100,000 digits": b"1" * 100_000,
}


@given(body=st.binary(max_size=200) | st.sampled_from(sorted(RAW_BODIES)))
def test_bytes_that_are_not_json_are_refused(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, body: bytes | str
) -> None:
    content = RAW_BODIES[body] if isinstance(body, str) else body
    for path in ("/sync/delta", "/sync/summary", "/adapters"):
        headers = _peer(issuer) if path.startswith("/sync") else issuer.headers("adapters")
        response = _answered(client, node, issuer, "POST", path, content=content, headers=headers)
        assert response.status_code in (200, 400, 413), response.text  # 413: over a publish body's 64 KiB


publish_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["ok-name", "switchyard-tiny-v1", "tuned@0123", "a" * 200]) | hostile,
        "path": st.sampled_from(["/", "/nonexistent", "/dev/null", "/proc/self", "a\x00b", "/" + "x" * 5000]) | hostile,
        "weight": hostile,
        "base_model": hostile,
        "extra": hostile,
    },
)


@given(fields=publish_fields | hostile)
def test_any_publish_body_is_refused_in_the_envelope(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, fields: Any
) -> None:
    headers = issuer.headers("adapters") | {"content-type": "application/json"}
    body = _dumps(fields)
    response = _answered(client, node, issuer, "POST", "/adapters", content=body, headers=headers)
    # No body of these names an adapter folder; one past the 64 KiB a publish takes is not read.
    assert response.status_code == (413 if len(body) > 64 * 1024 else 400)


@given(
    params=st.dictionaries(
        st.sampled_from(["name", "weight", "base_model", "path"]),
        st.sampled_from(["nan", "inf", "-inf", "1e999", "-0", "", "abc", "0x10", "1_0", "\uff15"])
        | st.text(max_size=30),
    ),
    archive=st.binary(max_size=300),
)
def test_any_upload_is_refused_in_the_envelope(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, params: dict[str, str], archive: bytes
) -> None:
    headers = issuer.headers("adapters") | {"content-type": "application/x-tar"}
    query = urllib.parse.urlencode(params)
    response = _answered(client, node, issuer, "POST", f"/adapters?{query}", content=archive, headers=headers)
    assert response.status_code == 400


@given(name=st.text(min_size=1, max_size=300), digest=st.text(min_size=1, max_size=100))
def test_retiring_or_revoking_what_does_not_exist_changes_nothing(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, name: str, digest: str
) -> None:
    name = "x" + name  # never `seeded` or `gone`, which exist
    headers = issuer.headers("adapters")
    quoted, quoted_digest = urllib.parse.quote(name, safe=""), urllib.parse.quote(digest, safe="")
    for path in (
        f"/adapters/{quoted}",
        f"/adapters/{quoted}/versions/{quoted_digest}",
        f"/adapters/seeded/versions/{quoted_digest}",
    ):
        response = _answered(client, node, issuer, "DELETE", path, headers=headers)
        assert response.status_code in (404, 405), response.text  # 405: a name that ends in `/audit`


@pytest.mark.parametrize(
    ("header", "status", "body"),
    [("bytes=0-", 206, b"0123456789"), ("bytes=3-5", 206, b"345"), ("bytes=7-99", 206, b"789"),
     ("bytes=10-", 416, None), ("bytes=" + "9" * 19 + "-", 416, None),
     # ignored (RFC 9110 §14.2): the whole blob
     ("bytes=5-3", 200, b"0123456789"), ("bytes=" + "9" * 20 + "-", 200, b"0123456789"),
     ("bytes=0-1,3-4", 200, b"0123456789"), ("items=0-", 200, b"0123456789"), ("bytes=-5", 200, b"0123456789"),
     ("bytes= 1-", 200, b"0123456789"), ("bytes=a-b", 200, b"0123456789"), ("", 200, b"0123456789")],
)  # fmt: skip
def test_a_blob_range_past_its_end_is_refused_in_the_envelope_and_others_are_served_or_ignored(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, tmp_path: Path, header: str, status: int, body: bytes | None
) -> None:
    (tmp_path / "blob").write_bytes(b"0123456789")
    digest = node.blobs.put_file(tmp_path / "blob")
    response = client.get(f"/blobs/{digest}", headers={"authorization": f"Bearer {issuer.peer_key}", "range": header})
    assert response.status_code == status, response.text
    if body is None:
        _refusal(response)
        assert response.headers["content-range"] == "bytes */10"
    else:
        assert response.content == body


def _answer_with(value: Any) -> bytes:
    return _dumps({"delta": value, "summary": {}})


PEER_ANSWERS = {  # what a broken or hostile peer answers an anti-entropy round with
    "JSON nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "a delta nested 5,000 deep": _answer_with(_deep(5_000)),
    "a NaN weight": _answer_with(_broken(("entries", "seeded", "contributions", "b", "weight"), "replace", Raw("NaN"))),
    "a 400-digit sequence": _answer_with(
        _broken(("entries", "seeded", "contributions", "b", "seq"), "replace", 10**400)
    ),
    "a list": b"[]",
    "a summary that is a list": _dumps({"delta": {"entries": {}, "dots": {}}, "summary": []}),
    "not JSON": b"\xff",
}


@pytest.mark.parametrize("answer", sorted(PEER_ANSWERS))
async def test_a_peers_bad_answer_never_ends_the_rounds_nor_changes_the_registry(tmp_path: Path, answer: str) -> None:
    settings = SyncSettings(
        region="a", peers=["http://peer.fake:8300"], data_dir=tmp_path, anti_entropy_interval_s=0.01
    )
    node = SyncNode(settings)
    state = node.state

    def fake_peer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=PEER_ANSWERS[answer], headers={"content-type": "application/json"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(fake_peer)) as client:
        peers = Peers(node, client)
        rounds = asyncio.create_task(peers.run())
        try:
            await asyncio.wait({rounds}, timeout=1.0)  # about 100 rounds' time
            assert not rounds.done(), rounds.exception()
        finally:
            rounds.cancel()
    assert peers.rounds >= 3
    assert node.state is state
    assert not peers.peers[0].up


def test_the_frameworks_own_errors_and_a_bug_are_answered_in_the_envelope(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    missing = _refusal(client.get("/no/such/route"))
    assert (client.get("/no/such/route").status_code, missing["code"]) == (404, "not_found")
    for method, path in (("PUT", "/adapters"), ("GET", "/sync/delta"), ("POST", "/health"), ("DELETE", "/blobs/x")):
        response = client.request(method, path)
        assert (response.status_code, _refusal(response)["code"]) == (405, "method_not_allowed")
        assert response.headers["allow"]

    def fake_typed_route(count: int) -> dict[str, int]:  # a route with a declared parameter, which none has yet
        return {"count": count}

    def fake_buggy_route() -> None:
        raise KeyError("secret-internal-detail")

    def fake_abandoned_route() -> None:
        raise ClientDisconnect  # what reading the body raises once the caller has gone

    app.get("/fake-typed")(fake_typed_route)
    app.get("/fake-bug")(fake_buggy_route)
    app.get("/fake-abandoned")(fake_abandoned_route)
    invalid = client.get("/fake-typed", params={"count": "many"})
    assert invalid.status_code == 400
    assert _refusal(invalid)["param"] == "count"
    assert "count" in invalid.json()["error"]["message"]
    assert _refusal(client.get("/fake-typed"))["param"] == "count"

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert client.get("/fake-abandoned").status_code == 499  # nobody reads it; not a fault, not logged
        bug = client.get("/fake-bug")  # the client raises if the exception escapes the app
    assert bug.status_code == 500
    assert bug.json()["error"] == {
        "message": "The sync sidecar had an internal error (KeyError).",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].exc_info is not None
    assert "/fake-bug" in errors[0].getMessage()
    assert client.get("/health").status_code == 200


def test_a_real_sidecar_answers_the_worst_bodies_without_a_traceback(
    issuer: FakeIssuer, log_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path)} | issuer.sidecar_env()
    server = ServerProcess("sync", ["--region", "a", "--port", str(port)], port=port, log_dir=log_dir, env=env)
    server.wait_ready()
    try:
        peer = _peer(issuer)
        worst = [_dumps(_deep(100_000)), _dumps({"entries": {"x": _deep(900)}, "dots": {}}), b"NaN", b"9" * 9_999]
        for body in worst:
            for path in ("/sync/delta", "/sync/summary"):
                assert httpx.post(server.url + path, content=body, headers=peer, timeout=10).status_code == 400
        weight = json.loads(json.dumps(VALID))
        weight["entries"]["seeded"]["contributions"]["b"]["weight"] = Raw("1" + "0" * 400)
        assert httpx.post(server.url + "/sync/delta", content=_dumps(weight), headers=peer).status_code == 400
        assert httpx.post(server.url + "/sync/delta", content=_dumps(VALID), headers=peer).status_code == 200
        assert httpx.get(server.url + "/nowhere").json()["error"]["code"] == "not_found"
        assert httpx.put(server.url + "/adapters").json()["error"]["code"] == "method_not_allowed"
        listed = httpx.get(server.url + "/adapters").json()["adapters"]
        assert [adapter["name"] for adapter in listed] == ["gone", "seeded"]
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(errors="replace")
