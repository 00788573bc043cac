"""The operators' write routes against hostile input, with a token that may write, in process:
any publish body and any upload is refused in the OpenAI envelope (never a 5xx) and changes
nothing; retiring, revoking or withdrawing what does not exist is a 404 and changes nothing; a
region withdraws its own part of a stack only, and only while it is the version it names."""

import urllib.parse
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from harness.fake_nodes import FakeIssuer
from sync import crdt
from sync.clock import Timestamp
from sync.node import ContributionChanged, SyncNode
from tests.unit.sync.hostile import answered, dumps, hostile, version

publish_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["ok-name", "switchyard-tiny-v1", "tuned@0123", "a" * 200]) | hostile,
        "path": st.sampled_from(["/", "/nonexistent", "/dev/null", "/proc/self", "a\x00b", "/" + "x" * 5000]) | hostile,
        "weight": hostile,
        "base_model": hostile,
        "replaces": st.sampled_from([-1, 0, 3, 2**70, "1", 1.5, True]) | hostile,
        "extra": hostile,
    },
)


@given(fields=publish_fields | hostile)
def test_any_publish_body_is_refused_in_the_envelope(
    client: TestClient, node: SyncNode, issuer: FakeIssuer, fields: Any
) -> None:
    headers = issuer.headers("adapters") | {"content-type": "application/json"}
    body = dumps(fields)
    response = answered(client, node, issuer, "POST", "/adapters", content=body, headers=headers)
    # No body of these names an adapter folder; one past the 64 KiB a publish takes is not read.
    assert response.status_code == (413 if len(body) > 64 * 1024 else 400)


@given(
    params=st.dictionaries(
        st.sampled_from(["name", "weight", "base_model", "path", "replaces"]),
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
    response = answered(client, node, issuer, "POST", f"/adapters?{query}", content=archive, headers=headers)
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
        f"/adapters/{quoted}/contribution",
        "/adapters/seeded/contribution?seq=1",  # this region has no part of it
    ):
        response = answered(client, node, issuer, "DELETE", path, headers=headers)
        assert response.status_code in (404, 405), response.text  # 405: a name that ends in `/audit`


def test_a_region_changes_its_own_part_of_a_stack_only_while_it_is_at_the_sequence_it_names(
    client: TestClient, node: SyncNode, issuer: FakeIssuer
) -> None:
    mine, newer, theirs = (version(seed, region) for seed, region in ((41, node.region), (42, node.region), (43, "b")))
    first = node.publish("stack", mine)
    node.receive(crdt.publish(node.state, "stack", theirs, 1.0, "b", Timestamp(3_000, 0, "b")))
    second = node.publish("stack", mine)  # a later job of this region, with the very same weights
    assert second == first + 1 == node.sequence("stack")
    headers = issuer.headers("adapters")
    path = f"/adapters/stack/contribution?seq={first}"
    stale = answered(client, node, issuer, "DELETE", path, headers=headers)
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "contribution_changed")  # not by digest
    assert node.sequence("stack") == second
    with pytest.raises(ContributionChanged):
        node.publish("stack", newer, replaces=first)
    assert node.publish("stack", newer, replaces=second) == second + 1
    served = crdt.recipe(node.state, "stack")
    assert served is not None
    assert [(part.region, part.version) for part in served.parts] == [("b", theirs.digest), (node.region, newer.digest)]
    withdrawn = answered(
        client, node, issuer, "DELETE", f"/adapters/stack/contribution?seq={second + 1}", headers=headers
    )
    assert (withdrawn.status_code, withdrawn.json()["seq"]) == (200, second + 2)
    served = crdt.recipe(node.state, "stack")
    assert served is not None
    assert [(part.region, part.version) for part in served.parts] == [("b", theirs.digest)]  # region b's stays
    again = answered(client, node, issuer, "DELETE", "/adapters/stack/contribution", headers=headers)
    assert (again.status_code, again.json()["error"]["code"]) == (404, "contribution_not_found")
    for bad in ("-1", "x", "1.5", ""):
        refused = answered(client, node, issuer, "DELETE", f"/adapters/stack/contribution?seq={bad}", headers=headers)
        assert refused.status_code == 400
    assert client.delete("/adapters/stack/contribution", headers=issuer.headers("read")).status_code == 403


def test_a_change_conditional_on_a_retired_part_does_not_bring_the_name_back(
    client: TestClient, node: SyncNode, issuer: FakeIssuer
) -> None:
    part = node.publish("retired-stack", version(51, node.region))
    node.retire("retired-stack")  # an operator, here or in another region
    with pytest.raises(ContributionChanged, match="retired"):
        node.publish("retired-stack", version(52, node.region), replaces=part)
    assert crdt.recipe(node.state, "retired-stack") is None
    headers = issuer.headers("adapters")
    path = f"/adapters/retired-stack/contribution?seq={part}"
    assert answered(client, node, issuer, "DELETE", path, headers=headers).status_code == 404
    assert not node.state.entries["retired-stack"].live
