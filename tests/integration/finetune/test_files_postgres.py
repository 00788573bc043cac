"""`/v1/files` on a real PostgreSQL behind a fault proxy: files kept and listed; the database
refusing connections or stalling is a 503 `database_unavailable` within seconds (never a 500
or a hang) and keeps nothing; back up, the same gateway serves again."""

import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from harness.counting_engine import CountingEngine
from harness.faultproxy import FaultProxy
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings
from tests.integration.finetune.conftest import SERVER

ENGINE = "http://engine"
EXAMPLE = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}
DATASET = ("\n".join(json.dumps(EXAMPLE) for _ in range(20)) + "\n").encode()


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(int(SERVER.rsplit(":", 1)[1]))
    yield fault_proxy
    fault_proxy.close()


@pytest.fixture
async def gateway(postgres_url: str, proxy: FaultProxy, tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    url = postgres_url.replace(SERVER, f"127.0.0.1:{proxy.port}")
    settings = pool_settings([ENGINE], data_dir=tmp_path, database_url=url)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as serving:
        yield serving


async def _upload(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/v1/files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", DATASET)})


async def test_a_database_gone_or_stalled_is_503_then_serves_again(
    gateway: InProcessGateway, proxy: FaultProxy, tmp_path: Path
) -> None:
    kept = await _upload(gateway.client)
    assert kept.status_code == 200, kept.text
    # What PostgreSQL would refuse (a NUL, an overlong id) never reaches it: 404 and 400, not 500.
    assert (await gateway.client.get("/v1/files/%00")).status_code == 404
    assert (await gateway.client.get("/v1/fine_tuning/jobs/ftjob-%00")).status_code == 404
    assert (await gateway.client.get("/v1/files", params={"after": "file-\x00"})).status_code == 400
    job = {"model": "counting", "training_file": "file-\u0000"}
    assert (await gateway.client.post("/v1/fine_tuning/jobs", json=job)).status_code == 400
    for fault in ("down", "stall"):
        proxy.set(fault)
        for request in ("upload", "list"):
            started = time.monotonic()
            response = await (_upload(gateway.client) if request == "upload" else gateway.client.get("/v1/files"))
            assert response.status_code == 503, (fault, request, response.text)
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["retry-after"]
            assert time.monotonic() - started < 20
        proxy.set("pass")
        listed = await gateway.client.get("/v1/files")
        assert listed.status_code == 200, listed.text
        assert [f["id"] for f in listed.json()["data"]] == [kept.json()["id"]]
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [f"{kept.json()['id']}.jsonl"]
