"""Idempotency parts that need no server: keys, fingerprints, the in-process store, lease renewal."""

import asyncio

import pytest
from fastapi import Request
from fastapi.responses import Response

from app.errors import IdempotencyKeyInUse, InvalidRequest
from app.idempotency import Idempotency, fingerprint, parse_key
from app.idempotency_store import InProcessStore, StoredAnswer


@pytest.mark.parametrize(
    ("raw", "key"), [('"abc-1"', "abc-1"), ("abc-1", "abc-1"), ('  "k"  ', "k"), ("x" * 255, "x" * 255)]
)
def test_keys_as_structured_strings_or_bare_tokens(raw: str, key: str) -> None:
    assert parse_key(raw) == key


@pytest.mark.parametrize("raw", ["", '""', "a b", "x" * 256, "tab\there", "caf\u00e9"])
def test_malformed_keys(raw: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_key(raw)
    assert caught.value.code == "invalid_idempotency_key"


def test_fingerprint_ignores_key_order_and_spacing_only() -> None:
    assert fingerprint(b'{"a": 1, "b": [1, 2]}') == fingerprint(b'{"b":[1,2],"a":1}')
    assert fingerprint(b'{"a": 1}') != fingerprint(b'{"a": 2}')
    assert fingerprint(b'{"a": "\\u00e9"}') == fingerprint('{"a": "\u00e9"}'.encode())


ANSWER = StoredAnswer(200, {"content-type": "application/json"}, b'{"ok": true}')


async def test_claim_then_running_then_completed() -> None:
    store = InProcessStore()
    claim = await store.claim("k", "fp", lease_ms=10_000)
    assert claim.outcome == "claimed"
    assert (await store.claim("k", "fp", 10_000)).outcome == "running"
    assert not await store.complete("k", "someone-else", ANSWER, 60_000)  # only the owner settles
    assert await store.complete("k", claim.owner, ANSWER, 60_000)
    done = await store.claim("k", "other-fp", 10_000)
    assert (done.outcome, done.fingerprint, done.answer) == ("completed", "fp", ANSWER)
    assert not await store.release("k", claim.owner)  # completed records are not released


async def test_release_frees_the_key_and_a_lapsed_lease_too() -> None:
    store = InProcessStore()
    claim = await store.claim("k", "fp", 10_000)
    assert await store.release("k", claim.owner)
    again = await store.claim("k", "fp", lease_ms=1)
    assert again.outcome == "claimed"
    await asyncio.sleep(0.01)
    assert not await store.renew("k", again.owner, 10_000)  # lapsed: no longer ours
    assert (await store.claim("k", "fp", 10_000)).outcome == "claimed"


async def test_the_in_process_store_stays_within_its_memory_and_never_drops_a_running_claim() -> None:
    probe = InProcessStore()
    claim = await probe.claim("a", "fp", 60_000)
    await probe.complete("a", claim.owner, ANSWER, 60_000)
    store = InProcessStore(max_bytes=3 * probe.size)  # room for three finished records
    running = await store.claim("running", "fp", 60_000)
    for key in ("a", "b", "c", "d"):
        claim = await store.claim(key, "fp", 60_000)
        assert await store.complete(key, claim.owner, ANSWER, 60_000)
        assert store.size <= 3 * probe.size
    assert len(store) == 3
    assert (await store.claim("running", "fp", 60_000)).outcome == "running"  # the oldest, but running
    assert (await store.claim("a", "fp", 60_000)).outcome == "claimed"  # the oldest finished: gone
    assert await store.complete("running", running.owner, ANSWER, 60_000)


async def test_expired_records_go_as_new_claims_come_a_few_at_a_time() -> None:
    store = InProcessStore()
    for number in range(100):
        claim = await store.claim(f"old-{number}", "fp", 60_000)
        await store.complete(f"old-{number}", claim.owner, ANSWER, retention_ms=1)
    await asyncio.sleep(0.01)  # all 100 expired, none looked up again
    for number in range(10):
        await store.claim(f"new-{number}", "fp", 60_000)
    assert len(store) == 10  # the expired went ahead of the new ones, at most 16 per claim


def _keyed_request(key: str) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/", "headers": [(b"idempotency-key", key.encode())]})


async def test_a_claim_outlives_its_lease_while_the_request_runs() -> None:
    idempotency = Idempotency(InProcessStore(), lease_s=0.2, retention_s=60, max_answer_bytes=1 << 20)
    body = b'{"model": "m"}'

    async def slow() -> Response:
        await asyncio.sleep(0.8)  # four leases
        return Response(b'{"ok": true}', media_type="application/json")

    first = asyncio.create_task(idempotency.run(_keyed_request("k"), "t", "/r", body, slow))
    await asyncio.sleep(0.6)
    with pytest.raises(IdempotencyKeyInUse):
        await idempotency.run(_keyed_request("k"), "t", "/r", body, slow)
    assert (await first).status_code == 200
    await asyncio.sleep(0.05)  # the answer is kept in the background
    replay = await idempotency.run(_keyed_request("k"), "t", "/r", body, slow)
    assert replay.headers["idempotent-replayed"] == "true"
    await idempotency.aclose()
