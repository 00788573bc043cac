"""Three regions' sidecars on loopback (`python -m sync`), each peer link through its own
fault proxy so a region can be cut off: publishing, concurrent contributions, a partition
that heals, a restart, and the API's answers to bad input. Every write carries an
operator's token and every peer request the peer key, as in production."""

import io
import json
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from harness.adapters import make_lora_adapter
from harness.fake_nodes import FakeIssuer
from harness.faultproxy import FaultProxy
from harness.servers import ServerProcess, free_port
from sync.blobs import file_sha256
from sync.crdt import FileRef, manifest_digest
from sync.node import SyncNode
from sync.peers import Peers
from sync.settings import SyncSettings

REGIONS = ("a", "b", "c")


@dataclass
class Mesh:
    data: Path
    ports: dict[str, int]
    links: dict[tuple[str, str], FaultProxy]  # (from, to): the proxy `from` reaches `to` through
    sidecars: dict[str, ServerProcess]
    start: Callable[[str], ServerProcess]
    issuer: FakeIssuer

    def operator(self) -> dict[str, str]:
        """Headers of a write: a token with scope `adapters`."""
        return self.issuer.headers("adapters")

    def peer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.issuer.peer_key}"}

    def url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.ports[region]}"

    def cut_off(self, region: str, fault: str) -> None:
        for (source, target), proxy in self.links.items():
            if region in (source, target):
                proxy.set(fault)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def adapters(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("sync-adapters")
    return [make_lora_adapter(builtin_model, root / f"lora{i}", rank=4, seed=i) for i in range(4)]


@pytest.fixture(scope="module")
def mesh(builtin_model: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    data = tmp_path_factory.mktemp("sync-data")
    issuer = FakeIssuer(data)
    ports = {region: free_port() for region in REGIONS}
    links = {(s, t): FaultProxy(ports[t]) for s in REGIONS for t in REGIONS if s != t}
    env = {
        "SWITCHYARD_DATA_DIR": str(data),
        "SWITCHYARD_SYNC_BASE_MODELS": json.dumps(["switchyard-tiny-v1", str(builtin_model)]),
        "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.3",
        "SWITCHYARD_SYNC_RETRY_BASE_S": "0.05",
        "SWITCHYARD_SYNC_RETRY_MAX_S": "0.5",
        "SWITCHYARD_SYNC_PEER_TIMEOUT_S": "2",
    } | issuer.sidecar_env()

    def start(region: str) -> ServerProcess:
        args = ["--region", region, "--port", str(ports[region])]
        for (source, _), proxy in links.items():
            if source == region:
                args += ["--peer", proxy.url]
        return ServerProcess("sync", args, port=ports[region], log_dir=log_dir, env=env).wait_ready()

    sidecars = {region: start(region) for region in REGIONS}
    yield Mesh(data, ports, links, sidecars, start, issuer)
    for sidecar in sidecars.values():
        sidecar.stop()
    for proxy in links.values():
        proxy.close()


def _adapters(url: str) -> dict[str, dict[str, Any]]:
    return {a["name"]: a for a in httpx.get(url + "/adapters", timeout=5).json()["adapters"]}


def _served(url: str, name: str) -> Any:
    adapter = _adapters(url).get(name)
    return adapter["served"] if adapter else None


def _eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


def _publish(mesh: Mesh, region: str, name: str, folder: Path, **fields: object) -> httpx.Response:
    body = {"name": name, "path": str(folder), **fields}
    return httpx.post(mesh.url(region) + "/adapters", json=body, headers=mesh.operator(), timeout=30)


def _converged(mesh: Mesh, name: str, regions: tuple[str, ...] = REGIONS) -> bool:
    served = [_served(mesh.url(r), name) for r in regions]
    return served[0] is not None and all(s == served[0] for s in served)


def test_an_adapter_published_in_one_region_is_served_in_every_region(mesh: Mesh, adapters: list[Path]) -> None:
    response = _publish(mesh, "a", "solo", adapters[0])
    assert response.status_code == 201, response.text
    digest = response.json()["published"]
    _eventually(lambda: _converged(mesh, "solo"), "solo served alike in a, b and c")
    served = _served(mesh.url("c"), "solo")
    assert served["parts"] == [["a", digest, 1.0]]
    assert served["base_model"] == "switchyard-tiny-v1"


def test_concurrent_contributions_converge_to_one_merged_digest(mesh: Mesh, adapters: list[Path]) -> None:
    first = _publish(mesh, "a", "shared", adapters[1])
    second = _publish(mesh, "b", "shared", adapters[2], weight=0.5)
    assert (first.status_code, second.status_code) == (201, 201)
    _eventually(
        lambda: _converged(mesh, "shared") and len(_served(mesh.url("c"), "shared")["parts"]) == 2,
        "both contributions served everywhere",
    )
    parts = _served(mesh.url("a"), "shared")["parts"]
    assert parts == [["a", first.json()["published"], 1.0], ["b", second.json()["published"], 0.5]]


def test_a_partitioned_region_publishes_and_converges_after_the_heal(mesh: Mesh, adapters: list[Path]) -> None:
    mesh.cut_off("c", "down")
    try:
        assert _publish(mesh, "c", "island", adapters[3]).status_code == 201
        assert _publish(mesh, "a", "mainland", adapters[0]).status_code == 201
        time.sleep(1.0)  # several anti-entropy rounds: nothing crosses
        assert _served(mesh.url("a"), "island") is None
        assert _served(mesh.url("c"), "mainland") is None
    finally:
        mesh.cut_off("c", "pass")
    healed = time.monotonic()
    _eventually(lambda: _converged(mesh, "island") and _converged(mesh, "mainland"), "both sides after the heal")
    assert time.monotonic() - healed < 5  # retries back off to at most 0.5 s; rounds every 0.3 s


def test_a_restarted_sidecar_keeps_its_state_and_its_sequence(mesh: Mesh, adapters: list[Path]) -> None:
    assert _publish(mesh, "b", "durable", adapters[0]).status_code == 201
    _eventually(lambda: _converged(mesh, "durable"), "durable everywhere")

    def registry() -> dict[str, dict[str, Any]]:  # what the registry holds, not what was loaded since
        local = ("stacked", "loaded", "problem")
        return {name: {k: v for k, v in a.items() if k not in local} for name, a in _adapters(mesh.url("b")).items()}

    before = registry()
    mesh.sidecars["b"].stop()
    mesh.sidecars["b"] = mesh.start("b")
    assert registry() == before
    assert _publish(mesh, "b", "durable", adapters[1]).status_code == 201  # a newer contribution
    _eventually(lambda: _converged(mesh, "durable"), "the new contribution everywhere")
    contribution = _adapters(mesh.url("a"))["durable"]["contributions"]["b"]
    assert contribution["seq"] == before["durable"]["contributions"]["b"]["seq"] + 1


def test_retiring_removes_the_adapter_everywhere(mesh: Mesh, adapters: list[Path]) -> None:
    assert _publish(mesh, "a", "short-lived", adapters[2]).status_code == 201
    _eventually(
        lambda: all(_adapters(mesh.url(r))["short-lived"]["stacked"] for r in REGIONS), "short-lived stacked everywhere"
    )
    digest = _adapters(mesh.url("a"))["short-lived"]["stacked"]
    stacks = [mesh.data / "sync" / region / "state" / "served" / digest for region in REGIONS]
    assert all(stack.is_dir() for stack in stacks)
    assert httpx.delete(mesh.url("c") + "/adapters/short-lived", headers=mesh.operator()).status_code == 200
    _eventually(
        lambda: all(_served(mesh.url(r), "short-lived") is None for r in REGIONS), "short-lived retired everywhere"
    )
    _eventually(lambda: not any(stack.exists() for stack in stacks), "its stacks removed from disk")


def test_bad_input_gets_a_clear_error(mesh: Mesh, adapters: list[Path], tmp_path: Path) -> None:
    url = mesh.url("a")

    def error(response: httpx.Response, status: int, code: str) -> str:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert body["code"] == code
        return str(body["message"])

    (tmp_path / "empty").mkdir()
    assert "adapter_config.json" in error(_publish(mesh, "a", "x", tmp_path / "empty"), 400, "adapter_refused")
    wrong_base = _publish(mesh, "a", "x", adapters[0], base_model="another-model")
    assert "another-model" in error(wrong_base, 400, "adapter_refused")
    error(_publish(mesh, "a", "bad name!", adapters[0]), 400, "invalid_request")
    operator, peer = mesh.operator(), mesh.peer()
    error(httpx.post(url + "/adapters", content=b"{not json", headers=operator, timeout=5), 400, "invalid_request")
    error(httpx.post(url + "/adapters", json={"name": "x"}, headers=operator, timeout=5), 400, "invalid_request")
    error(httpx.delete(url + "/adapters/never-published", headers=operator), 404, "adapter_not_found")
    error(httpx.post(url + "/sync/delta", json={"entries": 5}, headers=peer), 400, "invalid_request")
    too_large = httpx.post(url + "/sync/delta", content=b"x" * (5 * 1024 * 1024), headers=peer)
    error(too_large, 413, "request_too_large")
    error(httpx.get(url + "/blobs/" + "0" * 64, headers=peer), 404, "blob_not_found")
    error(httpx.get(url + "/blobs/not-a-digest", headers=peer), 400, "invalid_digest")


def test_an_edge_site_pulls_and_serves_but_never_publishes(
    mesh: Mesh, adapters: list[Path], log_dir: Path, tmp_path: Path
) -> None:
    assert _publish(mesh, "a", "to-the-edge", adapters[1]).status_code == 201
    port = free_port()
    args = ["--region", "edge1", "--role", "edge", "--port", str(port), "--peer", mesh.url("a")]
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path), "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.3"}
    env |= mesh.issuer.sidecar_env()
    edge = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
    try:
        _eventually(lambda: _served(edge.url, "to-the-edge") == _served(mesh.url("a"), "to-the-edge"), "pulled")
        body = {"name": "x", "path": str(adapters[0])}
        refused = httpx.post(edge.url + "/adapters", json=body, headers=mesh.operator(), timeout=10)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "edge_cannot_publish"
        assert httpx.delete(edge.url + "/adapters/to-the-edge", headers=mesh.operator()).status_code == 403
    finally:
        edge.stop()


def test_a_peer_clock_far_in_the_future_is_refused(mesh: Mesh) -> None:
    files = [["adapter_config.json", 10, "a" * 64]]
    digest = manifest_digest([FileRef("adapter_config.json", 10, "a" * 64)])
    future = [int(time.time() * 1000) + 3_600_000, 0, "z"]
    delta = {
        "entries": {
            "from-the-future": {
                "adds": [["z", 1]],
                "removes": [],
                "versions": {digest: {"digest": digest, "base_model": "m", "rank": 1, "files": files, "at": future}},
                "revoked": {},
                "contributions": {},
                "retired": [],
            }
        },
        "dots": {"z": 1},
    }
    response = httpx.post(mesh.url("a") + "/sync/delta", json=delta, headers=mesh.peer(), timeout=5)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "clock_skew"
    assert "from-the-future" not in _adapters(mesh.url("a"))


class _BadPeer(BaseHTTPRequestHandler):
    """Serves every blob wrong: `corrupt` sends other bytes of the right length, `truncated`
    promises the whole blob and sends its first half."""

    mode: ClassVar[str] = "corrupt"
    blobs: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        blob = self.blobs[self.path.rsplit("/", 1)[-1]]
        self.send_response(200)
        self.send_header("content-length", str(len(blob)))
        self.end_headers()
        self.wfile.write(b"x" * len(blob) if self.mode == "corrupt" else blob[: len(blob) // 2])

    def log_message(self, format: str, *args: object) -> None:
        pass


def _serve_bad_peer(mode: str, blobs: dict[str, bytes]) -> tuple[ThreadingHTTPServer, str]:
    handler = type(f"{mode.title()}Peer", (_BadPeer,), {"mode": mode, "blobs": blobs})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


async def test_a_corrupted_or_truncated_blob_is_refused_and_fetched_again(
    mesh: Mesh, adapters: list[Path], tmp_path: Path
) -> None:
    assert _publish(mesh, "a", "blobs", adapters[0]).status_code == 201
    weights = adapters[0] / "adapter_model.safetensors"
    digest, size = file_sha256(weights), weights.stat().st_size
    async with httpx.AsyncClient(timeout=5, headers=mesh.peer()) as client:
        resumed = await client.get(f"{mesh.url('a')}/blobs/{digest}", headers={"range": "bytes=100-"})
    assert (resumed.status_code, len(resumed.content)) == (206, size - 100)  # downloads resume
    corrupt, corrupt_url = _serve_bad_peer("corrupt", {digest: weights.read_bytes()})
    truncated, truncated_url = _serve_bad_peer("truncated", {digest: weights.read_bytes()})
    try:
        settings = SyncSettings(region="x", peers=[corrupt_url, truncated_url, mesh.url("a")], data_dir=tmp_path)
        node = SyncNode(settings)
        async with httpx.AsyncClient(timeout=5, headers=mesh.peer()) as client:
            peers = Peers(node, client)
            assert await peers.fetch_blob(digest, size)
        assert node.blobs.verify(digest)
        assert node.blobs.path(digest).read_bytes() == weights.read_bytes()
        # The corrupt copy, the first half, then only the second half: resumed, not fetched whole.
        assert peers.bytes_received == size + size // 2 + (size - size // 2)
    finally:
        for server in (corrupt, truncated):
            server.shutdown()
            server.server_close()


def _tar(folder: Path, destination: Path, *, extra: tuple[str, bytes] | None = None) -> bytes:
    with tarfile.open(destination, "w:gz") as tar:
        for file in sorted(folder.iterdir()):
            tar.add(file, arcname=file.name)
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))
    return destination.read_bytes()


def test_an_uploaded_archive_is_published_and_a_version_can_be_revoked(
    mesh: Mesh, adapters: list[Path], tmp_path: Path
) -> None:
    archive = _tar(adapters[2], tmp_path / "adapter.tar.gz")
    url = mesh.url("b") + "/adapters"
    gzip = {"content-type": "application/gzip"} | mesh.operator()
    uploaded = httpx.post(url, params={"name": "uploaded", "weight": "0.5"}, content=archive, headers=gzip, timeout=30)
    assert uploaded.status_code == 201, uploaded.text
    digest = uploaded.json()["published"]
    _eventually(lambda: _converged(mesh, "uploaded"), "the upload served everywhere")
    assert _served(mesh.url("a"), "uploaded")["parts"] == [["b", digest, 0.5]]
    # The same files published from a folder are the same version.
    assert _publish(mesh, "a", "from-folder", adapters[2]).json()["published"] == digest
    escaping = _tar(adapters[2], tmp_path / "escaping.tar.gz", extra=("../../outside", b"x"))
    refused = httpx.post(url, params={"name": "evil"}, content=escaping, headers=gzip)
    assert refused.status_code == 400
    assert "../../outside" in refused.json()["error"]["message"]
    tar = {"content-type": "application/x-tar"} | mesh.operator()
    garbage = httpx.post(url, params={"name": "x"}, content=b"not a tar", headers=tar)
    assert garbage.status_code == 400
    revoked = httpx.delete(f"{mesh.url('c')}/adapters/uploaded/versions/{digest}", headers=mesh.operator())
    assert revoked.status_code == 200, revoked.text
    _eventually(lambda: all(_served(mesh.url(r), "uploaded") is None for r in REGIONS), "the revoked version gone")
    unknown = httpx.delete(f"{mesh.url('c')}/adapters/uploaded/versions/{'0' * 64}", headers=mesh.operator())
    assert unknown.status_code == 404


def test_the_audit_log_of_an_adapter_is_in_clock_order(mesh: Mesh, adapters: list[Path]) -> None:
    assert _publish(mesh, "a", "audited", adapters[0]).status_code == 201
    assert _publish(mesh, "b", "audited", adapters[1]).status_code == 201
    _eventually(lambda: len(_served(mesh.url("c"), "audited")["parts"]) == 2, "both parts in c")
    assert httpx.delete(mesh.url("c") + "/adapters/audited", headers=mesh.operator()).status_code == 200
    events = httpx.get(mesh.url("c") + "/adapters/audited/audit").json()["events"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert events[-1]["event"] == "retired by c"
    assert sum("published by" in e["event"] for e in events) == 2
    assert httpx.get(mesh.url("c") + "/adapters/nothing/audit").status_code == 404


class _OldPeer(BaseHTTPRequestHandler):
    """A peer that cannot compare digests (404 on /sync/summary) and keeps what it is sent."""

    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        if self.path == "/sync/delta":
            self.received.append(json.loads(body))
        self.send_response(200 if self.path == "/sync/delta" else 404)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_a_peer_that_cannot_compare_digests_gets_the_full_state(adapters: list[Path], tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OldPeer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        peer_url = f"http://127.0.0.1:{server.server_address[1]}"
        settings = SyncSettings(region="x", peers=[peer_url], data_dir=tmp_path, base_models=["switchyard-tiny-v1"])
        node = SyncNode(settings)
        for number, name in enumerate(("one", "two")):
            version = node.check(adapters[number], at=node.clock.now(), base_model="switchyard-tiny-v1")
            node.publish(name, version)
        async with httpx.AsyncClient(timeout=5) as client:
            peers = Peers(node, client)
            await peers.anti_entropy_round(peers.peers[0])
        assert {name for message in _OldPeer.received for name in message["entries"]} == {"one", "two"}
    finally:
        server.shutdown()
        server.server_close()
