"""Idempotency keys: their parsing and fingerprints, the protocol on a store that may fail
(keeping an answer before it is sent, lease renewal), and the protocol through the gateway in
process over a counting engine that records every execution (the same over a real Redis:
tests/integration/gateway/test_idempotency_redis.py)."""

import asyncio
from collections.abc import AsyncIterator, Mapping

import httpx
import pytest
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import Headers

from app.errors import IdempotencyKeyInUse, IdempotencyUnavailable, InvalidRequest
from app.reliability.idempotency import Idempotency, fingerprint, parse_key
from app.reliability.idempotency_store import Claim, InProcessStore, StoredAnswer, StoreUnavailable
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings


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


ENGINE = "http://engine"
CHAT: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def engine() -> CountingEngine:
    return CountingEngine()


@pytest.fixture
async def gateway(engine: CountingEngine) -> AsyncIterator[InProcessGateway]:
    async with gateway_in_process(pool_settings([ENGINE]), {ENGINE: engine.app}) as gateway:
        yield gateway


def _executed(engine: CountingEngine) -> int:
    return sum(engine.executed.values())


async def _post(
    gateway: InProcessGateway, key: str | None, body: dict[str, object] = CHAT, **headers: str
) -> httpx.Response:
    sent = {"idempotency-key": key, **headers} if key is not None else dict(headers)
    return await gateway.client.post("/v1/chat/completions", json=body, headers=sent)


async def test_a_retried_request_executes_once_and_replays_the_answer(
    gateway: InProcessGateway, engine: CountingEngine
) -> None:
    first = await _post(gateway, '"order-1"')
    again = await _post(gateway, '"order-1"')
    assert (first.status_code, again.status_code) == (200, 200)
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert _executed(engine) == 1


async def test_fifty_concurrent_duplicates_execute_once(gateway: InProcessGateway, engine: CountingEngine) -> None:
    engine.behave(chunk_delay_s=0.1)  # 0.4 s per answer
    answers = await asyncio.gather(*(_post(gateway, "dup-50") for _ in range(50)))
    statuses = [(a.status_code, "idempotent-replayed" in a.headers) for a in answers]
    assert statuses.count((200, False)) == 1  # the one that ran
    assert all(s in ((200, False), (200, True), (409, False)) for s in statuses)
    assert _executed(engine) == 1


async def test_a_duplicate_in_flight_gets_409_with_retry_after(
    gateway: InProcessGateway, engine: CountingEngine
) -> None:
    engine.behave(chunk_delay_s=0.25)
    running = asyncio.create_task(_post(gateway, "slow-1"))
    await asyncio.sleep(0.3)
    duplicate = await _post(gateway, "slow-1")
    await running
    assert duplicate.status_code == 409
    assert duplicate.headers["retry-after"] == "1"
    assert duplicate.json()["error"]["code"] == "idempotency_key_in_use"


async def test_the_same_key_with_another_body_is_422(gateway: InProcessGateway) -> None:
    assert (await _post(gateway, "k-422")).status_code == 200
    other = await _post(gateway, "k-422", CHAT | {"max_tokens": 3})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    # Key order and spacing are not a different body.
    same = await gateway.client.post(
        "/v1/chat/completions",
        content=b'{ "messages": [{"content": "hi", "role": "user"}], "model": "counting" }',
        headers={"idempotency-key": "k-422", "content-type": "application/json"},
    )
    assert same.headers.get("idempotent-replayed") == "true"


async def test_tenants_do_not_share_keys(gateway: InProcessGateway, engine: CountingEngine) -> None:
    alice = await _post(gateway, "shared", CHAT | {"user": "alice"})
    bob = await _post(gateway, "shared", CHAT | {"user": "bob"})
    assert (alice.status_code, bob.status_code) == (200, 200)
    assert "idempotent-replayed" not in bob.headers
    assert _executed(engine) == 2


async def test_a_completed_stream_replays_byte_identical(gateway: InProcessGateway, engine: CountingEngine) -> None:
    body = CHAT | {"stream": True, "max_tokens": 6}
    first = await _post(gateway, "stream-1", body)
    again = await _post(gateway, "stream-1", body)
    assert first.headers["content-type"].startswith("text/event-stream")
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert first.content.rstrip().endswith(b"data: [DONE]")
    assert _executed(engine) == 1


async def test_a_failure_before_the_first_byte_releases_the_key(
    gateway: InProcessGateway, engine: CountingEngine
) -> None:
    engine.behave(fail_status=503, fail_times=100)
    assert (await _post(gateway, "retry-me")).status_code == 503
    await asyncio.sleep(0.01)  # the key is freed just after the answer (over a network, before a retry arrives)
    engine.behave()
    after = await _post(gateway, "retry-me")
    assert after.status_code == 200
    assert "idempotent-replayed" not in after.headers
    assert _executed(engine) == 1


@pytest.mark.parametrize("key", ["", '""', "has space", "x" * 256, "caf\u00e9"])
async def test_a_malformed_key_is_400(gateway: InProcessGateway, key: str) -> None:
    headers = httpx.Headers([(b"idempotency-key", key.encode("utf-8"))])
    response = await gateway.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_idempotency_key"


async def test_a_stream_closed_before_it_began_releases_its_key() -> None:
    """A client gone before its answer began: the stream is closed unstarted, and its key is free
    for the retry (not claimed, and renewed, for good)."""
    store = InProcessStore()
    idempotency = Idempotency(store, lease_s=5, retention_s=60, max_answer_bytes=4096)

    async def events() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        yield b"data: [DONE]\n\n"

    async def answer() -> Response:
        return StreamingResponse(events(), media_type="text/event-stream")

    keyed = Headers(raw=[(b"idempotency-key", b"gone-early")])
    response = await idempotency.run(keyed, "t", "/r", b'{"stream": true}', answer)
    assert isinstance(response, StreamingResponse)
    await response.body_iterator.aclose()  # type: ignore[attr-defined]  # what the relay does as it ends
    await asyncio.sleep(0.01)  # the release runs in the background
    retry = await idempotency.run(keyed, "t", "/r", b'{"stream": true}', answer)
    assert "idempotent-replayed" not in retry.headers  # run again: the key was free
    assert isinstance(retry, StreamingResponse)
    assert [chunk async for chunk in retry.body_iterator] == [b"data: {}\n\n", b"data: [DONE]\n\n"]
    await idempotency.aclose()


def test_numbers_past_64_bits_keep_bodies_apart() -> None:
    """orjson reads them as floats; the fingerprint must not take two such bodies for one."""
    first, second = b'{"seed": 18446744073709551616}', b'{"seed": 18446744073709551617}'
    assert fingerprint(first) != fingerprint(second)
    assert fingerprint(first) == fingerprint(b'{ "seed":18446744073709551616 }')
