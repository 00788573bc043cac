"""Who may call a real sidecar (`python -m sync`): writes need a token from the trusted issuer
with scope `adapters` or `admin`, peer routes the peer key, reads are open; settings that
would leave a sidecar open beyond loopback refuse to start. Every refusal is the OpenAI
envelope with an RFC 6750 challenge, never a 5xx."""

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from harness.adapters import make_lora_adapter
from harness.fake_nodes import FakeIssuer
from harness.servers import ROOT, ServerProcess, free_port
from tests.conftest import MODEL

PEER_ROUTES = (("POST", "/sync/delta"), ("POST", "/sync/summary"), ("GET", "/blobs/" + "0" * 64))


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> FakeIssuer:
    return FakeIssuer(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def sidecar(issuer: FakeIssuer, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path_factory.mktemp("auth-data"))} | issuer.sidecar_env()
    server = ServerProcess("sync", ["--region", "a", "--port", str(port)], port=port, log_dir=log_dir, env=env)
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def adapter(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(builtin_model, tmp_path_factory.mktemp("auth-adapter") / "lora", rank=4)


def _publish(sidecar: ServerProcess, adapter: Path, name: str, **headers: str) -> httpx.Response:
    body = {"name": name, "path": str(adapter), "base_model": MODEL}
    return httpx.post(sidecar.url + "/adapters", json=body, headers=headers, timeout=30)


def _refusal(response: httpx.Response, status: int, code: str) -> str:
    """The challenge of a refusal that must be `status` with `code` in the OpenAI envelope."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["type"] == "invalid_request_error"
    return response.headers["www-authenticate"]


def test_publishing_needs_a_token_with_scope_adapters_or_admin(
    sidecar: ServerProcess, issuer: FakeIssuer, adapter: Path
) -> None:
    assert _refusal(_publish(sidecar, adapter, "a1"), 401, "missing_token") == 'Bearer realm="switchyard-sync"'
    chat_only = _publish(sidecar, adapter, "a1", authorization=f"Bearer {issuer.token('chat')}")
    challenge = _refusal(chat_only, 403, "insufficient_scope")
    assert 'error="insufficient_scope"' in challenge
    assert 'scope="adapters admin"' in challenge
    for scopes in (("adapters",), ("chat", "admin")):
        published = _publish(sidecar, adapter, "a1", authorization=f"Bearer {issuer.token(*scopes)}")
        assert published.status_code == 201, published.text
    assert "a1" in {a["name"] for a in httpx.get(sidecar.url + "/adapters").json()["adapters"]}


def test_tokens_the_sidecar_must_not_trust_are_refused(
    sidecar: ServerProcess, issuer: FakeIssuer, adapter: Path, tmp_path: Path
) -> None:
    impostor = FakeIssuer(tmp_path, issuer=issuer.issuer)  # the same `iss`, another key
    hostile = {
        "another key": impostor.token("adapters"),
        "another issuer": issuer.token("adapters", iss="https://elsewhere.test"),
        "another audience": issuer.token("adapters", aud="billing"),
        "expired": issuer.token("adapters", exp=1_000_000_000),
        "no subject": issuer.token("adapters", sub=""),
        "not a JWT": "not-a-token",
        "the peer key": issuer.peer_key,
    }
    for what, token in hostile.items():
        challenge = _refusal(_publish(sidecar, adapter, "x", authorization=f"Bearer {token}"), 401, "invalid_token")
        assert 'error="invalid_token"' in challenge, what
    assert _refusal(_publish(sidecar, adapter, "x", authorization=f"Basic {token}"), 401, "missing_token")
    good = f"Bearer {issuer.token('adapters')}"
    twice = httpx.post(sidecar.url + "/adapters", json={"name": "x", "path": str(adapter)},
                       headers=[("authorization", good), ("authorization", good)])  # fmt: skip
    assert 'error="invalid_request"' in _refusal(twice, 400, "invalid_request")
    assert "x" not in {a["name"] for a in httpx.get(sidecar.url + "/adapters").json()["adapters"]}


def test_every_write_needs_the_token_and_reads_stay_open(
    sidecar: ServerProcess, issuer: FakeIssuer, adapter: Path
) -> None:
    operator = {"authorization": f"Bearer {issuer.token('adapters')}"}
    published = _publish(sidecar, adapter, "w1", **operator)
    assert published.status_code == 201, published.text
    digest = published.json()["published"]
    chat = {"authorization": f"Bearer {issuer.token('chat')}"}
    upload = {"content-type": "application/x-tar"}
    writes = [
        ("POST", "/adapters?name=w2", upload),
        ("DELETE", f"/adapters/w1/versions/{digest}", {}),
        ("DELETE", "/adapters/w1", {}),
    ]
    for method, path, headers in writes:
        anonymous = httpx.request(method, sidecar.url + path, headers=headers, content=b"x" * 10)
        _refusal(anonymous, 401, "missing_token")
        _refusal(httpx.request(method, sidecar.url + path, headers=headers | chat), 403, "insufficient_scope")
    [w1] = [a for a in httpx.get(sidecar.url + "/adapters").json()["adapters"] if a["name"] == "w1"]
    assert (w1["live"], w1["versions"][0]["revoked"]) == (True, False)  # what the refused writes asked: not done
    assert "w2" not in {a["name"] for a in httpx.get(sidecar.url + "/adapters").json()["adapters"]}
    assert httpx.delete(sidecar.url + "/adapters/w1", headers=operator).status_code == 200
    for path in ("/health", "/metrics", "/adapters", "/adapters/w1/audit"):
        assert httpx.get(sidecar.url + path).status_code == 200, path


def test_peer_routes_need_the_peer_key(sidecar: ServerProcess, issuer: FakeIssuer) -> None:
    wrong = {
        "no key": {},
        "a wrong key": {"authorization": "Bearer " + "x" * len(issuer.peer_key)},
        "the key with a prefix": {"authorization": f"Bearer {issuer.peer_key[:-1]}"},
        "an operator's token": {"authorization": f"Bearer {issuer.token('adapters', 'admin')}"},
        "another scheme": {"authorization": f"Basic {issuer.peer_key}"},
    }
    summary = json.dumps({"region": "z", "summary": {}}).encode()
    for method, path in PEER_ROUTES:
        for what, headers in wrong.items():
            response = httpx.request(method, sidecar.url + path, headers=headers, content=summary)
            assert 'realm="switchyard-sync-peers"' in _refusal(response, 401, "invalid_peer_key"), (path, what)
        twice = [("authorization", f"Bearer {issuer.peer_key}")] * 2
        _refusal(httpx.request(method, sidecar.url + path, headers=twice, content=summary), 401, "invalid_peer_key")
    peer = {"authorization": f"Bearer {issuer.peer_key}"}
    answered = httpx.post(sidecar.url + "/sync/summary", content=summary, headers=peer)
    assert answered.status_code == 200, answered.text
    assert httpx.get(sidecar.url + PEER_ROUTES[2][1], headers=peer).status_code == 404  # no such blob, but let in


def _start(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sync", "--port", str(free_port()), *args], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"} | env, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_a_sidecar_open_beyond_loopback_refuses_to_start(tmp_path: Path) -> None:
    data = {"SWITCHYARD_DATA_DIR": str(tmp_path)}
    no_auth = _start("--host", "0.0.0.0", env=data | {"SWITCHYARD_SYNC_AUTH_MODE": "disabled"})
    assert no_auth.returncode == 2, no_auth.stderr
    assert "auth_mode disabled is refused unless host is a loopback address" in no_auth.stderr
    no_key = _start("--host", "0.0.0.0", "--peer", "http://10.0.0.2:8300", env=data)
    assert no_key.returncode == 2, no_key.stderr
    assert "SWITCHYARD_SYNC_PEER_KEY" in no_key.stderr
    assert "Traceback" not in no_key.stderr + no_auth.stderr


def test_a_token_the_gateways_own_issuer_minted_publishes(
    adapter: Path, log_dir: Path, tmp_path: Path, counting_engine: ServerProcess
) -> None:
    """The sidecar trusts a real gateway's built-in issuer: its JWKS URL, the exact `iss`."""
    data = {"SWITCHYARD_DATA_DIR": str(tmp_path)}
    port = free_port()
    pools = [{"name": "p", "region": "local", "replicas": [counting_engine.url]}]
    gateway_env = data | {"SWITCHYARD_AUTH_MODE": "builtin", "SWITCHYARD_POOLS": json.dumps(pools)}
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=gateway_env).wait_ready()
    sidecar_port = free_port()
    args = ["--region", "g", "--port", str(sidecar_port), "--auth-issuer", gateway.url]
    sidecar = ServerProcess("sync", args, port=sidecar_port, log_dir=log_dir, env=data)
    try:
        sidecar.wait_ready()

        def mint(scope: str) -> str:
            command = [sys.executable, "-m", "app.auth", "--port", str(port), "token", "--scope", scope]
            env = {"PATH": "/usr/bin:/bin"} | data
            return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()

        published = _publish(sidecar, adapter, "from-the-gateway", authorization=f"Bearer {mint('admin')}")
        assert published.status_code == 201, published.text
        _refusal(_publish(sidecar, adapter, "x", authorization=f"Bearer {mint('chat')}"), 403, "insufficient_scope")
    finally:
        sidecar.stop()
        gateway.stop()


def test_the_sidecar_calls_the_engines_with_their_api_key(
    issuer: FakeIssuer, adapter: Path, builtin_model: Path, log_dir: Path, tmp_path: Path
) -> None:
    key = secrets.token_urlsafe(24)
    port = free_port()
    engine_args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    engine = ServerProcess("engines.transformers", engine_args, port=port, log_dir=log_dir,
                           env={"SWITCHYARD_ENGINE_API_KEY": key})  # fmt: skip
    sidecars: list[ServerProcess] = []
    try:
        engine.wait_ready()
        for name, extra in (("keyless", {}), ("keyed", {"SWITCHYARD_SYNC_ENGINE_API_KEY": key})):
            sidecar_port = free_port()
            env = issuer.sidecar_env() | extra | {"SWITCHYARD_DATA_DIR": str(tmp_path / name),
                                                  "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.3"}  # fmt: skip
            args = ["--region", name, "--port", str(sidecar_port), "--engine", engine.url]
            sidecars.append(ServerProcess("sync", args, port=sidecar_port, log_dir=log_dir, env=env).wait_ready())
            published = _publish(sidecars[-1], adapter, f"{name}-adapter", **issuer.headers("adapters"))
            assert published.status_code == 201, published.text
        keyless, keyed = sidecars

        def engine_models() -> set[str]:
            response = httpx.get(engine.url + "/v1/models", headers={"authorization": f"Bearer {key}"})
            return {card["id"] for card in response.json()["data"]}

        deadline = time.monotonic() + 60
        while "keyed-adapter" not in engine_models():
            assert time.monotonic() < deadline, keyed.output()
            time.sleep(0.2)
        assert "keyless-adapter" not in engine_models()
        assert f'sync_engine_up{{engine="{engine.url}"}} 0.0' in httpx.get(keyless.url + "/metrics").text
        assert (
            keyless.output().count(f"engine {engine.url} does not answer: Client error '401") == 1
        )  # once, not per pass
        assert httpx.get(engine.url + "/v1/models").status_code == 401  # the engine is locked for everyone else
    finally:
        for process in (*sidecars, engine):
            process.stop()


class _Recorder(BaseHTTPRequestHandler):
    """Stands in for an engine or a peer: answers anything, keeps each request's Authorization."""

    seen: ClassVar[list[str | None]]

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.seen.append(self.headers.get("authorization"))
        body = b'{"data": []}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_each_plane_gets_its_own_credential_and_no_other(issuer: FakeIssuer, log_dir: Path, tmp_path: Path) -> None:
    recorders: dict[str, tuple[ThreadingHTTPServer, list[str | None], str]] = {}
    for plane in ("engine", "peer"):
        seen: list[str | None] = []
        server = ThreadingHTTPServer(("127.0.0.1", 0), type(f"{plane.title()}Recorder", (_Recorder,), {"seen": seen}))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        recorders[plane] = (server, seen, f"http://127.0.0.1:{server.server_address[1]}")
    engine_key = secrets.token_urlsafe(24)
    port = free_port()
    args = ["--port", str(port), "--engine", recorders["engine"][2], "--peer", recorders["peer"][2]]
    env = issuer.sidecar_env() | {"SWITCHYARD_DATA_DIR": str(tmp_path), "SWITCHYARD_SYNC_ENGINE_API_KEY": engine_key,
                                  "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.2",
                                  "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.2"}  # fmt: skip
    sidecar = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
    try:
        deadline = time.monotonic() + 20
        while not all(len(recorders[plane][1]) >= 2 for plane in recorders):
            assert time.monotonic() < deadline, sidecar.output()
            time.sleep(0.1)
    finally:
        sidecar.stop()
        for server, _, _ in recorders.values():
            server.shutdown()
            server.server_close()
    assert set(recorders["engine"][1]) == {f"Bearer {engine_key}"}  # never the peer key
    assert set(recorders["peer"][1]) == {f"Bearer {issuer.peer_key}"}  # never the engines' key
