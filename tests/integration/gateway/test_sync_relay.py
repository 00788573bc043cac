"""`/sync/adapters…` (app/api/sync_relay.py): the region's sync sidecar's adapter API relayed
for the console. The gateway asks for a token with scope `adapters` or `admin` before anything
reaches the sidecar; answers (errors included) come back as the sidecar gave them; nothing but
the adapter routes can be reached through it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.servers import ServerProcess, free_port
from tests.unit.app.auth.conftest import serving, settings_of


@pytest.fixture(scope="module")
def sidecar(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A sidecar on loopback that trusts no issuer of ours (auth off): only the gateway's check stands."""
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path_factory.mktemp("relay")), "SWITCHYARD_SYNC_AUTH_MODE": "disabled"}
    server = ServerProcess("sync", ["--region", "eu", "--port", str(port)], port=port, log_dir=log_dir, env=env)
    yield server.wait_ready()
    server.stop()


async def test_the_gateway_asks_for_the_scope_before_the_sidecar_is_reached(
    tmp_path: Path, sidecar: ServerProcess
) -> None:
    async with serving(settings_of(tmp_path, sync_url=sidecar.url)) as gateway:
        assert (await gateway.client.get("/sync/adapters")).status_code == 401
        chat_only = (await gateway.token("svc")).json()["access_token"]
        refused = await gateway.client.get("/sync/adapters", headers={"authorization": f"Bearer {chat_only}"})
        assert refused.status_code == 403
        assert 'scope="adapters admin"' in refused.headers["www-authenticate"]
        admin = {"authorization": f"Bearer {(await gateway.token('ops')).json()['access_token']}"}
        listed = await gateway.client.get("/sync/adapters", headers=admin)
        assert listed.status_code == 200
        assert listed.json() == {"region": "eu", "adapters": []}
        unknown = await gateway.client.delete("/sync/adapters/nothing-here", headers=admin)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "adapter_not_found"  # the sidecar's own answer
        published = await gateway.client.post("/sync/adapters?name=x", content=b"not a tar", headers=admin | {
            "content-type": "application/x-tar"})  # fmt: skip
        assert published.status_code == 400
        assert published.json()["error"]["message"]
        # a publish from a path on the sidecar's disks is for the cluster, never relayed
        from_path = await gateway.client.post("/sync/adapters", json={"name": "probe", "path": "/etc"}, headers=admin)
        assert from_path.status_code == 415
        assert "tar archive" in from_path.json()["error"]["message"]
        # a body on a read is not passed on (nor a length without one): no 500
        odd = await gateway.client.request("GET", "/sync/adapters", content=b"0123456789", headers=admin)
        assert odd.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/sync/adapters/..%2F..%2Fsync%2Fdelta",
        "/sync/adapters/a/../../blobs/x",
        "/sync/adapters/a/b/c/d",
        "/sync/adapters//audit",
    ],
)
async def test_only_the_adapter_routes_can_be_reached(tmp_path: Path, sidecar: ServerProcess, path: str) -> None:
    async with serving(settings_of(tmp_path, sync_url=sidecar.url)) as gateway:
        admin = {"authorization": f"Bearer {(await gateway.token('ops')).json()['access_token']}"}
        answer = await gateway.client.get(path, headers=admin)
        assert answer.status_code == 404
        assert answer.json()["error"]["message"]


async def test_no_sidecar_configured_or_reachable_is_a_clear_error(tmp_path: Path) -> None:
    async with serving(settings_of(tmp_path)) as gateway:
        admin = {"authorization": f"Bearer {(await gateway.token('ops')).json()['access_token']}"}
        answer = await gateway.client.get("/sync/adapters", headers=admin)
        assert answer.status_code == 404
        assert answer.json()["error"]["code"] == "sync_not_configured"
    down = f"http://127.0.0.1:{free_port()}"
    async with serving(settings_of(tmp_path / "down", sync_url=down)) as gateway:
        admin = {"authorization": f"Bearer {(await gateway.token('ops')).json()['access_token']}"}
        answer = await gateway.client.get("/sync/adapters", headers=admin)
        assert answer.status_code == 502
        assert "did not answer" in answer.json()["error"]["message"]
        assert down not in answer.json()["error"]["message"]  # no internal address told
    with pytest.raises(ValueError, match="sync_url"):
        settings_of(tmp_path, sync_url="not a url")


async def test_a_sidecar_that_refuses_the_gateway_s_tokens_is_a_502_not_a_sign_in_loop(
    tmp_path: Path, log_dir: Path
) -> None:
    """A 401 from the sidecar is a misconfiguration (it trusts another issuer), not an expired
    session: the console would otherwise ask to sign in again on every poll."""
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path / "other"), "SWITCHYARD_SYNC_AUTH_ISSUER": "https://another.example"}
    other = ServerProcess("sync", ["--region", "eu", "--port", str(port)], port=port, log_dir=log_dir, env=env)
    try:
        other.wait_ready()
        async with serving(settings_of(tmp_path, sync_url=other.url)) as gateway:
            admin = {"authorization": f"Bearer {(await gateway.token('ops')).json()['access_token']}"}
            answer = await gateway.client.delete("/sync/adapters/anything", headers=admin)
            assert answer.status_code == 502
            assert "auth_issuer" in answer.json()["error"]["message"]
    finally:
        other.stop()
