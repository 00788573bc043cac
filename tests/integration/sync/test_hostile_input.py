"""A real `python -m sync` answers the worst bodies (JSON nested 100,000 deep, NaN, 9,999 digits,
a weight of 401 digits) with a 400, and its log holds no traceback: what the in-process tests
under tests/unit/sync check, here through a real server's HTTP parser."""

import json
from pathlib import Path

import httpx
import pytest

from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from tests.unit.sync.hostile import VALID, Raw, deep, dumps, peer_headers


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> FakeIssuer:
    return FakeIssuer(tmp_path_factory.mktemp("input-issuer"))


def test_a_real_sidecar_answers_the_worst_bodies_without_a_traceback(
    issuer: FakeIssuer, log_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path)} | issuer.sidecar_env()
    server = ServerProcess("sync", ["--region", "a", "--port", str(port)], port=port, log_dir=log_dir, env=env)
    server.wait_ready()
    try:
        peer = peer_headers(issuer)
        worst = [dumps(deep(100_000)), dumps({"entries": {"x": deep(900)}, "dots": {}}), b"NaN", b"9" * 9_999]
        for body in worst:
            for path in ("/sync/delta", "/sync/summary"):
                assert httpx.post(server.url + path, content=body, headers=peer, timeout=10).status_code == 400
        weight = json.loads(json.dumps(VALID))
        weight["entries"]["seeded"]["contributions"]["b"]["weight"] = Raw("1" + "0" * 400)
        assert httpx.post(server.url + "/sync/delta", content=dumps(weight), headers=peer).status_code == 400
        assert httpx.post(server.url + "/sync/delta", content=dumps(VALID), headers=peer).status_code == 200
        assert httpx.get(server.url + "/nowhere").json()["error"]["code"] == "not_found"
        assert httpx.put(server.url + "/adapters").json()["error"]["code"] == "method_not_allowed"
        listed = httpx.get(server.url + "/adapters").json()["adapters"]
        assert [adapter["name"] for adapter in listed] == ["gone", "seeded"]
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text(errors="replace")
