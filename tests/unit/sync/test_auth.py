"""Property tests of the sidecar's guards, in process (the app, its lifespan, no HTTP parser in
the way): whatever `Authorization` headers a caller sends, a write or a peer route answers
400, 401 or 403 in the OpenAI envelope, never a 5xx and never the route itself; with
authentication disabled on loopback, writes need nothing."""

from pathlib import Path

from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from harness.fake_nodes import FakeIssuer
from sync.app import create_app
from sync.settings import SyncSettings

ROUTES = (("POST", "/adapters"), ("DELETE", "/adapters/x"), ("POST", "/sync/delta"), ("GET", "/blobs/" + "0" * 64))


def _credential(issuer: FakeIssuer) -> st.SearchStrategy[bytes]:
    """Bytes a hostile caller might send: noise, near misses of the real credentials, tokens
    with scopes it lacks, huge ones."""
    near = st.sampled_from(
        [
            b"Bearer " + issuer.peer_key.encode()[:-1],
            b"Bearer " + issuer.peer_key.encode() + b"x",
            b"bearer  " + issuer.token("chat").encode(),
            b"Bearer " + issuer.token("chat", "finetune").encode(),
            b"Bearer " + b"e30." * 3000,
            b"Bearer \xff\xfe" + issuer.peer_key.encode(),
        ]
    )
    return st.binary(max_size=300) | st.binary(max_size=300).map(lambda noise: b"Bearer " + noise) | near


@given(data=st.data())
def test_no_credential_a_caller_makes_up_gets_in_or_breaks_a_route(
    client: TestClient, issuer: FakeIssuer, data: st.DataObject
) -> None:
    headers = data.draw(st.lists(_credential(issuer), max_size=3))
    method, path = data.draw(st.sampled_from(ROUTES))
    response = client.request(method, path, headers=[(b"authorization", value) for value in headers], content=b"{}")
    assert response.status_code in (400, 401, 403), response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert response.headers["www-authenticate"].startswith("Bearer realm=")


def test_with_authentication_disabled_on_loopback_writes_need_nothing(tmp_path: Path) -> None:
    settings = SyncSettings(data_dir=tmp_path, auth_mode="disabled")
    with TestClient(create_app(settings)) as client:
        answer = client.request("DELETE", "/adapters/never-published")
        assert (answer.status_code, answer.json()["error"]["code"]) == (404, "adapter_not_found")  # let in
        assert client.post("/sync/summary", json={"region": "z", "summary": {}}).status_code == 200  # no peer key
