"""The in-process idempotency store: claims, leases and their renewal, kept answers, and its
memory bound (in all, and per tenant). The Redis store: tests/integration/gateway/test_idempotency_redis.py."""

import asyncio

import pytest

from app.reliability.idempotency_store import InProcessStore, StoredAnswer, StoreFull

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


async def test_expired_records_go_as_new_claims_come_a_few_at_a_time() -> None:
    store = InProcessStore()
    for number in range(100):
        claim = await store.claim(f"old-{number}", "fp", 60_000)
        await store.complete(f"old-{number}", claim.owner, "fp", ANSWER, retention_ms=1)
    await asyncio.sleep(0.01)  # all 100 expired, none looked up again
    for number in range(10):
        await store.claim(f"new-{number}", "fp", 60_000)
    assert len(store) == 10  # the expired went ahead of the new ones, at most 16 per claim


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
