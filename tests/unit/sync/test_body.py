"""Reading a client's body: bytes that are not JSON (empty, not UTF-8, a BOM, brackets by the
hundred thousand, digits without end) are refused in the OpenAI envelope on every route that
takes a body, in process, and change nothing."""

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from harness.fake_nodes import FakeIssuer
from sync.node import SyncNode
from tests.unit.sync.hostile import answered, peer_headers

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
        headers = peer_headers(issuer) if path.startswith("/sync") else issuer.headers("adapters")
        response = answered(client, node, issuer, "POST", path, content=content, headers=headers)
        assert response.status_code in (200, 400, 413), response.text  # 413: over a publish body's 64 KiB
