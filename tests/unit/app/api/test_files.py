"""`/v1/files` (app/api/files.py) through a gateway in process, its files on SQLite and disk:
the stock OpenAI SDK's calls; bad datasets and bad forms refused with the line or the field and
nothing kept; each tenant sees only its own files; an unreachable database is a 503, and the
chat routes never wait for it."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest

from app.auth.keys import mint
from app.settings import GatewaySettings
from harness.counting_engine import CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings

ENGINE = "http://engine"
EXAMPLE = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}
DATASET = ("\n".join(json.dumps(EXAMPLE) for _ in range(20)) + "\n").encode()


def _settings(tmp_path: Path, **settings: Any) -> GatewaySettings:
    return pool_settings([ENGINE], data_dir=tmp_path, **settings)


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[InProcessGateway]:
    async with gateway_in_process(_settings(tmp_path, max_upload_bytes=64 * 1024), {ENGINE: CountingEngine().app}) as g:
        yield g


def _sdk(gateway: InProcessGateway, token: str = "unused") -> openai.AsyncOpenAI:
    """The OpenAI SDK, reaching the gateway in process (over httpx2, the SDK's HTTP client)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gateway")
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=token, max_retries=0, http_client=http)


def _kept(tmp_path: Path) -> list[str]:
    folder = tmp_path / "files"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def _upload(gateway: InProcessGateway, data: bytes, **fields: str) -> httpx.Response:
    return await gateway.client.post(
        "/v1/files", data={"purpose": "fine-tune", **fields}, files={"file": ("train.jsonl", data)}
    )


async def test_the_sdk_uploads_lists_reads_and_deletes_a_dataset(gateway: InProcessGateway, tmp_path: Path) -> None:
    sdk = _sdk(gateway)
    created = await sdk.files.create(file=("train.jsonl", DATASET), purpose="fine-tune")
    assert created.id.startswith("file-")
    assert (created.bytes, created.filename, created.purpose, created.status) == (
        len(DATASET),
        "train.jsonl",
        "fine-tune",
        "processed",
    )
    assert abs(created.created_at - time.time()) < 60
    assert (await sdk.files.retrieve(created.id)).id == created.id
    assert [f.id async for f in sdk.files.list()] == [created.id]
    assert (await sdk.files.content(created.id)).content == DATASET
    deleted = await sdk.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    with pytest.raises(openai.NotFoundError):
        await sdk.files.retrieve(created.id)
    assert _kept(tmp_path) == []


async def test_files_list_a_page_at_a_time(gateway: InProcessGateway) -> None:
    ids = [(await _upload(gateway, DATASET)).json()["id"] for _ in range(3)]
    first = (await gateway.client.get("/v1/files", params={"limit": 2})).json()
    assert (len(first["data"]), first["has_more"]) == (2, True)
    rest = (await gateway.client.get("/v1/files", params={"limit": 2, "after": first["last_id"]})).json()
    assert (len(rest["data"]), rest["has_more"]) == (1, False)
    assert {f["id"] for f in first["data"] + rest["data"]} == set(ids)
    oldest = (await gateway.client.get("/v1/files", params={"order": "asc"})).json()["data"]
    newest = (await gateway.client.get("/v1/files")).json()["data"]
    assert [f["id"] for f in oldest] == [f["id"] for f in reversed(newest)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DATASET + b"{not json\n", "line 21: not valid JSON"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "line 1: no assistant turn"),
        (b"", "the file has no examples"),
        (b"prompt,completion\nping,pong\n", "line 1: not valid JSON"),
        (b'[{"messages": []}]', "line 1: expected a JSON object"),
    ],
)
async def test_a_bad_dataset_is_refused_naming_the_line_and_kept_nowhere(
    gateway: InProcessGateway, tmp_path: Path, data: bytes, message: str
) -> None:
    response = await _upload(gateway, data)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "file")
    assert _kept(tmp_path) == []
    assert (await gateway.client.get("/v1/files")).json()["data"] == []


async def test_a_file_over_the_limit_is_413_and_kept_nowhere(gateway: InProcessGateway, tmp_path: Path) -> None:
    response = await _upload(gateway, DATASET * 40)  # ~100 KiB over a 64 KiB limit
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert _kept(tmp_path) == []


async def test_bad_forms_name_the_field(gateway: InProcessGateway, tmp_path: Path) -> None:
    no_purpose = await gateway.client.post("/v1/files", files={"file": ("t.jsonl", DATASET)})
    assert (no_purpose.status_code, no_purpose.json()["error"]["param"]) == (400, "purpose")
    wrong_purpose = await _upload(gateway, DATASET, purpose="assistants")
    assert (wrong_purpose.status_code, wrong_purpose.json()["error"]["param"]) == (400, "purpose")
    no_file = await gateway.client.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("x", b"y")})
    assert (no_file.status_code, no_file.json()["error"]["param"]) == (400, "file")
    huge_field = await _upload(gateway, DATASET, note="x" * 10_000)
    assert (huge_field.status_code, huge_field.json()["error"]["param"]) == (400, "note")
    as_json = await gateway.client.post("/v1/files", json={"purpose": "fine-tune"})
    assert as_json.status_code == 415
    boundary = "b0undary"
    cut = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'.encode() + DATASET
    truncated = await gateway.client.post(
        "/v1/files", content=cut, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert truncated.status_code == 400
    assert "closing boundary" in truncated.json()["error"]["message"]
    no_boundary = await gateway.client.post("/v1/files", content=b"x", headers={"content-type": "multipart/form-data"})
    assert no_boundary.status_code == 400
    assert _kept(tmp_path) == []


async def test_a_tenant_sees_only_its_own_files(tmp_path: Path) -> None:
    settings = _settings(tmp_path, auth_mode="builtin")
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        alice, bob, chat_only = (
            mint(settings, subject=subject, scopes=scopes, ttl_s=60)
            for subject, scopes in (("alice", ["finetune"]), ("bob", ["finetune"]), ("carol", ["chat"]))
        )
        mine = await _sdk(gateway, alice).files.create(file=("a.jsonl", DATASET), purpose="fine-tune")
        theirs = _sdk(gateway, bob)
        assert [f.id async for f in theirs.files.list()] == []
        for call in (theirs.files.retrieve(mine.id), theirs.files.content(mine.id), theirs.files.delete(mine.id)):
            with pytest.raises(openai.NotFoundError):
                await call
        with pytest.raises(openai.PermissionDeniedError):
            await _sdk(gateway, chat_only).files.list()
        with pytest.raises(openai.AuthenticationError):
            await _sdk(gateway, "not-a-token").files.list()
        assert (await _sdk(gateway, alice).files.retrieve(mine.id)).id == mine.id


async def test_an_unreachable_database_is_503_and_chat_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.finetuning.FineTuning.READY_WAIT_S", 0.5)
    settings = _settings(tmp_path, database_url="postgresql+asyncpg://postgres@127.0.0.1:9/none")
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        response = await _upload(gateway, DATASET)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.headers["retry-after"]
        listed = await gateway.client.get("/v1/files")
        assert listed.status_code == 503
        chat = {"model": "counting", "messages": [{"role": "user", "content": "hi"}]}
        assert (await gateway.client.post("/v1/chat/completions", json=chat)).status_code == 200
    assert _kept(tmp_path) == []


async def test_hostile_forms_and_ids_are_refused_not_500(gateway: InProcessGateway, tmp_path: Path) -> None:
    long_boundary = "b" * 300
    refused = await gateway.client.post(
        "/v1/files", content=b"x", headers={"content-type": f"multipart/form-data; boundary={long_boundary}"}
    )
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "Content-Type")
    for path in ("/v1/files/%00", "/v1/files/file-" + "a" * 500, "/v1/files/file-x/content"):
        assert (await gateway.client.get(path)).status_code == 404
    after = await gateway.client.get("/v1/files", params={"after": "\x00"})
    assert (after.status_code, after.json()["error"]["param"]) == (400, "after")
    named = await gateway.client.post(
        "/v1/files", data={"purpose": "fine-tune"}, files={"file": ("a\x07b" + "c" * 600, DATASET)}
    )
    assert named.status_code == 200, named.text
    kept_name = named.json()["filename"]
    assert (len(kept_name), kept_name.isprintable(), kept_name.endswith("ccc")) == (512, True, True)
    assert _kept(tmp_path) == [f"{named.json()['id']}.jsonl"]


async def test_a_tenant_cannot_store_more_than_its_share(tmp_path: Path) -> None:
    settings = _settings(tmp_path, auth_mode="builtin", max_stored_bytes_per_tenant=len(DATASET) * 2 + 10)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        alice, bob = (_sdk(gateway, mint(settings, subject=s, scopes=["finetune"], ttl_s=60)) for s in ("alice", "bob"))
        first = await alice.files.create(file=("a.jsonl", DATASET), purpose="fine-tune")
        await alice.files.create(file=("b.jsonl", DATASET), purpose="fine-tune")
        kept = _kept(tmp_path)
        for refused_upload in (DATASET, DATASET[: len(DATASET) // 2]):  # over the share, and none left at all
            with pytest.raises(openai.APIStatusError) as refused:
                await alice.files.create(file=("c.jsonl", refused_upload), purpose="fine-tune")
            assert refused.value.status_code == 413
            assert refused.value.code == "storage_limit_reached"
        assert _kept(tmp_path) == kept  # nothing of the refused uploads kept
        await bob.files.create(file=("b.jsonl", DATASET), purpose="fine-tune")  # bob's share is his own
        await alice.files.delete(first.id)
        await alice.files.create(file=("c.jsonl", DATASET), purpose="fine-tune")  # room again


async def test_uploads_at_once_cannot_together_pass_a_tenants_share(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_stored_bytes_per_tenant=len(DATASET) * 2 + 10)
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        client = _sdk(gateway)
        answers = await asyncio.gather(
            *(client.files.create(file=(f"{n}.jsonl", DATASET), purpose="fine-tune") for n in range(5)),
            return_exceptions=True,
        )
        refused = [a for a in answers if isinstance(a, openai.APIStatusError)]
        assert len(refused) == 3, answers  # each passed the check at its start: none had been kept yet
        assert {(a.status_code, a.code) for a in refused} == {(413, "storage_limit_reached")}
        assert len(_kept(tmp_path)) == 2
        assert sum([f.bytes async for f in client.files.list()]) == len(DATASET) * 2
