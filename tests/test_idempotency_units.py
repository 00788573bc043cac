"""Idempotency parts that need no server: keys, fingerprints, the in-process store, lease renewal."""

import asyncio
from collections.abc import AsyncIterator, Mapping

import pytest
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import Headers

from app.errors import IdempotencyKeyInUse, IdempotencyUnavailable, InvalidRequest
from app.reliability.idempotency import Idempotency, fingerprint, parse_key
from app.reliability.idempotency_store import Claim, InProcessStore, StoredAnswer, StoreFull, StoreUnavailable


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
    held = await store.complete("k", "someone-else", "fp", ANSWER, 60_000)  # only the owner settles
    assert held is not None
    assert held.outcome == "running"
    assert await store.complete("k", claim.owner, "fp", ANSWER, 60_000) is None
    other = StoredAnswer(200, {}, b"another answer")
    kept = await store.complete("k", "late-owner", "fp", other, 60_000)  # a kept answer never changes
    assert kept is not None
    assert (kept.outcome, kept.answer) == ("completed", ANSWER)
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
    assert await store.renew({"k": again.owner}, 10_000) == 0  # lapsed: no longer ours
    assert (await store.claim("k", "fp", 10_000)).outcome == "claimed"


async def test_a_full_in_process_store_refuses_new_claims_and_never_drops_a_kept_answer() -> None:
    probe = InProcessStore()
    claim = await probe.claim("a", "fp", 60_000)
    await probe.complete("a", claim.owner, "fp", ANSWER, 60_000)
    store = InProcessStore(max_bytes=3 * probe.size, tenant_share=1.0)  # room for three finished records
    for key in ("a", "b", "c"):
        claim = await store.claim(key, "fp", 60_000)
        assert await store.complete(key, claim.owner, "fp", ANSWER, 60_000) is None
    with pytest.raises(StoreFull):
        await store.claim("d", "fp", 60_000)
    for key in ("a", "b", "c"):  # every kept answer is still what its key replays
        assert (await store.claim(key, "fp", 60_000)).answer == ANSWER
    short = InProcessStore(max_bytes=3 * probe.size, tenant_share=1.0)
    for key in ("a", "b", "c"):
        claim = await short.claim(key, "fp", 60_000)
        await short.complete(key, claim.owner, "fp", ANSWER, retention_ms=1)
    await asyncio.sleep(0.01)
    assert (await short.claim("d", "fp", 60_000)).outcome == "claimed"  # expired records made room


async def test_one_tenant_cannot_fill_the_in_process_store_for_the_others() -> None:
    probe = InProcessStore()
    claim = await probe.claim("a", "fp", 60_000)
    await probe.complete("a", claim.owner, "fp", ANSWER, 60_000)
    store = InProcessStore(max_bytes=8 * probe.size, tenant_share=0.25)  # two records a tenant
    for key in ("m1", "m2"):
        claim = await store.claim(key, "fp", 60_000, tenant="mallory")
        await store.complete(key, claim.owner, "fp", ANSWER, 60_000, tenant="mallory")
    with pytest.raises(StoreFull) as refused:
        await store.claim("m3", "fp", 60_000, tenant="mallory")
    assert "your share" in str(refused.value)
    for key in ("a1", "a2"):  # everyone else still has theirs
        claim = await store.claim(key, "fp", 60_000, tenant="alice")
        assert await store.complete(key, claim.owner, "fp", ANSWER, 60_000, tenant="alice") is None
    assert (await store.claim("m1", "fp", 60_000, tenant="mallory")).answer == ANSWER  # replays still work


async def test_a_full_store_is_a_503_that_says_so() -> None:
    probe = InProcessStore()
    claim = await probe.claim("a", "fp", 60_000)
    await probe.complete("a", claim.owner, "fp", ANSWER, 60_000)
    store = InProcessStore(max_bytes=probe.size, tenant_share=1.0)
    idempotency = Idempotency(store, lease_s=1, retention_s=60, max_answer_bytes=4096)

    async def answer() -> Response:
        return Response(b'{"ok": true}', media_type="application/json")

    await idempotency.run(_keyed_request("first"), "t", "/r", BODY, answer)
    with pytest.raises(IdempotencyUnavailable) as refused:
        await idempotency.run(_keyed_request("second"), "t", "/r", BODY, answer)
    assert "full" in refused.value.message
    assert (await idempotency.run(_keyed_request("first"), "t", "/r", BODY, answer)).headers["idempotent-replayed"]
    await idempotency.aclose()


async def test_two_idempotency_key_headers_are_refused() -> None:
    idempotency = Idempotency(InProcessStore(), lease_s=1, retention_s=60, max_answer_bytes=4096)
    request = Headers(raw=[(b"idempotency-key", b"a"), (b"idempotency-key", b"b")])

    async def answer() -> Response:
        raise AssertionError("an ambiguous request must not run")

    with pytest.raises(InvalidRequest) as refused:
        await idempotency.run(request, "t", "/r", BODY, answer)
    assert refused.value.param == "Idempotency-Key"
    await idempotency.aclose()


async def test_a_header_the_client_made_up_never_sticks_the_key() -> None:
    """A response header that is not UTF-8 (an x-request-id echoed as the client sent it) is kept
    as latin-1, as HTTP has it: keeping never fails halfway and leaves the key claimed."""
    idempotency = Idempotency(InProcessStore(), lease_s=1, retention_s=60, max_answer_bytes=4096)

    async def answer() -> Response:
        response = Response(b'{"ok": true}', media_type="application/json")
        response.raw_headers.append((b"x-request-id", "caf\u00e9".encode("latin-1")))
        return response

    await idempotency.run(_keyed_request("k"), "t", "/r", BODY, answer)
    replay = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, answer)
    assert replay.headers["x-request-id"] == "caf\u00e9"
    await idempotency.aclose()


async def test_expired_records_go_as_new_claims_come_a_few_at_a_time() -> None:
    store = InProcessStore()
    for number in range(100):
        claim = await store.claim(f"old-{number}", "fp", 60_000)
        await store.complete(f"old-{number}", claim.owner, "fp", ANSWER, retention_ms=1)
    await asyncio.sleep(0.01)  # all 100 expired, none looked up again
    for number in range(10):
        await store.claim(f"new-{number}", "fp", 60_000)
    assert len(store) == 10  # the expired went ahead of the new ones, at most 16 per claim


def _keyed_request(key: str) -> Headers:
    return Headers(raw=[(b"idempotency-key", key.encode())])


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
    replay = await idempotency.run(_keyed_request("k"), "t", "/r", body, slow)
    assert replay.headers["idempotent-replayed"] == "true"
    await idempotency.aclose()


async def test_a_lapsed_claim_still_keeps_its_answer_when_nobody_took_the_key() -> None:
    """A store that lost the claim (a restart, a lease that ran out while it was down) takes
    the answer all the same: it is the key's first."""
    store = InProcessStore()
    assert await store.complete("k", "owner-gone", "fp", ANSWER, 60_000) is None
    assert (await store.claim("k", "fp", 10_000)).answer == ANSWER


async def test_renewal_extends_every_running_claim_of_ours_at_once() -> None:
    store = InProcessStore()
    claims = {key: (await store.claim(key, "fp", lease_ms=50)).owner for key in ("a", "b", "c")}
    assert await store.renew(claims | {"d": "nobody"}, 10_000) == 3
    await asyncio.sleep(0.1)  # past the first lease
    assert {(await store.claim(key, "fp", 10_000)).outcome for key in claims} == {"running"}


class FlakyStore(InProcessStore):
    """A fake store that is down while `down` is set, as Redis is while it restarts."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    async def claim(self, key: str, fingerprint: str, lease_ms: int, *, tenant: str = "") -> Claim:
        self._check()
        return await super().claim(key, fingerprint, lease_ms, tenant=tenant)

    async def renew(self, claims: Mapping[str, str], lease_ms: int) -> int:
        self._check()
        return await super().renew(claims, lease_ms)

    async def complete(
        self, key: str, owner: str, fingerprint: str, answer: StoredAnswer, retention_ms: int, *, tenant: str = ""
    ) -> Claim | None:
        self._check()
        return await super().complete(key, owner, fingerprint, answer, retention_ms, tenant=tenant)

    async def release(self, key: str, owner: str) -> bool:
        self._check()
        return await super().release(key, owner)


def _idempotency(store: InProcessStore, settle_timeout_s: float = 5.0) -> Idempotency:
    return Idempotency(store, lease_s=0.3, retention_s=60, max_answer_bytes=1 << 20, settle_timeout_s=settle_timeout_s)


BODY = b'{"model": "m"}'


async def test_an_answer_waits_for_the_store_and_is_sent_only_once_kept() -> None:
    store = FlakyStore()
    idempotency = _idempotency(store)
    sent = 0

    async def answer() -> Response:
        nonlocal sent
        sent += 1
        store.down = True  # the store dies while the request runs
        asyncio.get_running_loop().call_later(0.8, setattr, store, "down", False)  # past two leases
        return Response(b'{"n": %d}' % sent, media_type="application/json")

    first = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, answer)
    assert first.body == b'{"n": 1}'
    assert not store.down  # it was answered only once the store was back and the answer kept
    again = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, answer)
    assert (again.body, again.headers["idempotent-replayed"]) == (b'{"n": 1}', "true")
    assert sent == 1
    await idempotency.aclose()


async def test_an_answer_that_cannot_be_kept_is_not_sent() -> None:
    store = FlakyStore()
    idempotency = _idempotency(store, settle_timeout_s=0.3)

    async def answer() -> Response:
        store.down = True
        return Response(b'{"n": 1}', media_type="application/json")

    with pytest.raises(IdempotencyUnavailable) as refused:
        await idempotency.run(_keyed_request("k"), "t", "/r", BODY, answer)
    assert "could not be recorded" in refused.value.message
    await idempotency.aclose()


async def test_a_stream_is_kept_before_its_done_event_goes_out() -> None:
    store = FlakyStore()
    idempotency = _idempotency(store)
    events = [b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\ndata: [DONE]\n\n']

    async def stream() -> Response:
        async def body() -> AsyncIterator[bytes]:
            for event in events:
                yield event

        return StreamingResponse(body(), media_type="text/event-stream")

    response = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, stream)
    assert isinstance(response, StreamingResponse)
    received = []
    async for chunk in response.body_iterator:
        received.append(chunk)
        if len(received) == 1:
            store.down = True
            asyncio.get_running_loop().call_later(0.5, setattr, store, "down", False)
    assert received == [events[0], b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"]
    replay = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, stream)
    assert replay.body == b"".join(events)
    await idempotency.aclose()


async def test_a_stream_that_cannot_be_kept_ends_with_an_error_not_done() -> None:
    store = FlakyStore()
    idempotency = _idempotency(store, settle_timeout_s=0.2)

    async def stream() -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b'data: {"n": 1}\n\n'
            store.down = True
            yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    response = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, stream)
    assert isinstance(response, StreamingResponse)
    received = b"".join([bytes(chunk) async for chunk in response.body_iterator])  # type: ignore[arg-type]
    assert b"[DONE]" not in received
    assert b'"code":"idempotency_unavailable"' in received
    await idempotency.aclose()


async def test_an_answer_too_large_to_keep_is_remembered_and_never_replaced() -> None:
    idempotency = Idempotency(InProcessStore(), lease_s=1, retention_s=60, max_answer_bytes=1024)
    runs = 0

    async def big() -> Response:
        nonlocal runs
        runs += 1
        return Response(b"x" * 2048, media_type="application/json")

    assert (await idempotency.run(_keyed_request("k"), "t", "/r", BODY, big)).status_code == 200
    again = await idempotency.run(_keyed_request("k"), "t", "/r", BODY, big)
    assert again.status_code == 422
    assert b"idempotent_answer_not_kept" in again.body
    assert runs == 1
    await idempotency.aclose()
