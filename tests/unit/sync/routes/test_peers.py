"""The peer routes (`/sync/delta`, `/sync/summary`, `/blobs/*`) against hostile bodies, with the
peer key, in process: a valid delta with one part broken (a wrong type, a missing or extra
field, a huge or negative number, NaN, a lone surrogate, JSON nested thousands deep, a CRDT
entry of the wrong shape) and arbitrary JSON are refused in the OpenAI envelope or joined
whole, never a 5xx; a refusal changes neither the registry nor the clock, and whatever was
accepted can still be summarized, listed, saved and read back. A blob range past its end is a
416 in the envelope; other ranges are served or ignored."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from harness.fake_nodes import FakeIssuer
from sync.node import SyncNode
from tests.unit.sync.hostile import (
    ACTIONS,
    HOSTILE_TEXT,
    PATHS,
    Raw,
    answered,
    broken,
    deep,
    dumps,
    hostile,
    json_values,
    peer_headers,
    refusal,
    still_serves,
)

# Each part of the delta gets each of these: the wrong type, a bound just past, a number no
# int64 holds, text no name is, what JSON itself has no value for, nesting deeper than Python.
SWEEP: list[Any] = [None, True, -1, 0, 2**63, 10**400, 1.5, 101, "", "\ud800", "x" * 300, [], {}, ["b", 1]]
SWEEP += [Raw("NaN"), Raw("Infinity"), deep(5_000)]


@st.composite
def broken_deltas(draw: st.DrawFn) -> Any:
    action = draw(st.sampled_from(ACTIONS))
    value = draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=70) if action == "rename" else hostile)
    return broken(draw(st.sampled_from(PATHS)), action, value)


def test_every_part_of_a_delta_broken_every_way_is_refused_or_joined_whole(
    client: TestClient, node: SyncNode, issuer: FakeIssuer
) -> None:
    cases = [(path, "replace", value) for path in PATHS for value in SWEEP]
    cases += [(path, action, "x") for path in PATHS for action in ACTIONS[1:]]
    for number, (path, action, value) in enumerate(cases):
        body = dumps(broken(path, action, value))
        serves = number % 50 == 0  # (every answer's state is checked; serving, now and then and at the end)
        answered(client, node, issuer, "POST", "/sync/delta", content=body, headers=peer_headers(issuer), serves=serves)
    still_serves(client, node, issuer)


@given(delta=broken_deltas())
def test_a_broken_delta_is_refused_in_the_envelope_or_joined_whole(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, delta: Any
) -> None:
    answered(client, node, issuer, "POST", "/sync/delta", content=dumps(delta), headers=peer_headers(issuer))


@given(body=json_values | hostile | st.builds(lambda e: {"entries": e, "dots": {}}, hostile))
def test_any_json_to_a_peer_route_is_refused_or_answered(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, body: Any
) -> None:
    for path, sent in (("/sync/delta", body), ("/sync/summary", body), ("/sync/summary", {"summary": body})):
        answered(client, node, issuer, "POST", path, content=dumps(sent), headers=peer_headers(issuer))


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
        refusal(response)
        assert response.headers["content-range"] == "bytes */10"
    else:
        assert response.content == body
