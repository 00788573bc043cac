"""Replicas added, drained and removed at run time (app/pools/membership.py), through the admin
API of a gateway in process over three regions of counting engines (conftest.py)."""

import asyncio

from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.counting_engine import CountingEngine
from tests.unit.app.pools.conftest import URLS, Regions, wait_for

ADMIN = "/admin/pools"


async def test_admin_api_adds_a_checked_replica_that_takes_traffic(regions: Regions) -> None:
    client = regions.gateway.client
    newcomer, stranger = "http://newcomer", "http://stranger"
    regions.gateway.engines[newcomer] = CountingEngine(name="newcomer").app
    regions.gateway.engines[stranger] = create_engine_app(FakeEngine(model_name="another-model"))
    refused = await client.post(f"{ADMIN}/eu/replicas", json={"url": "http://nobody-listens:1"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "replica_unreachable"
    mismatch = await client.post(f"{ADMIN}/eu/replicas", json={"url": stranger})
    assert mismatch.status_code == 422
    assert mismatch.json()["error"]["code"] == "model_mismatch"
    assert "counting" in mismatch.json()["error"]["message"]
    assert (await client.post(f"{ADMIN}/nowhere/replicas", json={"url": newcomer})).status_code == 404
    assert (await client.post(f"{ADMIN}/eu/replicas", json={"url": "not a url"})).status_code == 400
    assert (await client.post(f"{ADMIN}/eu/replicas", json={"url": URLS["us-0"]})).status_code == 409

    added = await client.post(f"{ADMIN}/eu/replicas", json={"url": newcomer})
    assert added.status_code == 201, added.text
    new_id = added.json()["id"]
    assert (new_id, added.json()["healthy"]) == ("eu-2", True)
    replicas = {(await regions.route(f"after-{i}"))[1] for i in range(30)}
    assert replicas == {"eu-0", "eu-1", "eu-2"}

    removed = await client.delete(f"{ADMIN}/eu/replicas/{new_id}")
    assert (removed.status_code, removed.json()["status"]) == (200, "removed")
    assert new_id not in await regions.replicas()
    assert {(await regions.route(f"after-{i}"))[1] for i in range(30)} == {"eu-0", "eu-1"}


async def test_a_drained_replica_finishes_its_streams_and_gets_no_new_ones(regions: Regions) -> None:
    client = regions.gateway.client
    session = await regions.session_on("eu-1")
    url = str((await regions.replicas())["eu-1"]["url"])
    regions.engines["eu-1"].behave(chunk_delay_s=0.05)
    body = {"model": "counting", "messages": [{"role": "user", "content": "go"}], "max_tokens": 20, "stream": True}
    headers = {"x-session-id": session, "x-request-id": "long-stream"}
    stream = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=headers))
    await wait_for(lambda: regions.engines["eu-1"].executed["long-stream"] == 1)  # streaming, for a second

    drained = await client.post(f"{ADMIN}/eu/replicas/eu-1/drain")
    assert drained.json()["draining"] is True
    assert {(await regions.route(session))[1] for _ in range(3)} == {"eu-0"}
    removing = await client.delete(f"{ADMIN}/eu/replicas/eu-1")
    assert (removing.status_code, removing.json()["status"]) == (202, "draining")
    assert not stream.done()
    assert "eu-1" in await regions.replicas()  # still there while its stream runs

    answer = await stream
    assert answer.headers["x-route-replica"] == "eu-1"
    rest = [line for line in answer.text.splitlines() if line]
    assert rest[-1] == "data: [DONE]"
    assert len(rest) == 21  # every token, then [DONE]
    assert not any('"error"' in line for line in rest)

    async def gone() -> bool:
        return "eu-1" not in await regions.replicas()

    await wait_for(gone, limit_s=5)
    readded = await client.post(f"{ADMIN}/eu/replicas", json={"url": url})
    assert (readded.status_code, readded.json()["id"]) == (201, "eu-2")  # ids are never reused
