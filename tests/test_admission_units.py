"""Admission control's rules, on a registry of replicas that are never called: leases are
taken and released by hand, so every grant and every shed is seen as it happens."""

import asyncio
import time

import pytest

from app.errors import DeadlineExceeded, Overloaded, TenantOverShare
from app.factory import build_router
from app.pools.choice import choose
from app.pools.registry import Lease, PoolRegistry
from app.reliability.admission import Admission
from app.reliability.deadlines import Deadline
from app.settings import GatewaySettings, PoolSettings

MODEL = "m"


def _admission(*, replicas: int = 1, max_load: int = 2, max_queue: int = 4) -> Admission:
    pool = PoolSettings.model_validate(
        {"name": "p", "max_load": max_load, "replicas": [f"http://r{i}:1" for i in range(replicas)]}
    )
    registry = PoolRegistry([pool], build_router(GatewaySettings()))
    for replica in registry.replicas():
        replica.mark_up({MODEL: {"id": MODEL}}, rtt_ms=1.0)
    admission = Admission(registry, max_queue=max_queue, queue_timeout_s=30.0)
    admission.registry = registry  # type: ignore[attr-defined]  # for the tests' own routing
    return admission


def _ask(admission: Admission, tenant: str, *, timeout_s: float = 30.0) -> "asyncio.Task[Lease]":
    registry: PoolRegistry = admission.registry  # type: ignore[attr-defined]

    async def admitted() -> Lease:
        route = lambda: choose(registry, MODEL, tenant, time.monotonic())  # noqa: E731
        _, lease = await admission.admit(tenant, MODEL, route, Deadline(time.monotonic() + timeout_s))
        return lease

    return asyncio.create_task(admitted())


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_full_queue_refuses_the_newcomer_at_once_and_keeps_who_waits() -> None:
    admission = _admission(max_load=2, max_queue=4)
    running = [_ask(admission, "noisy") for _ in range(2)]
    waiting = [_ask(admission, "noisy") for _ in range(4)]
    await _settle()
    assert all(task.done() for task in running)
    assert not any(task.done() for task in waiting)

    newcomer = _ask(admission, "quiet")
    await _settle()  # answered within the loop turns of its own arrival: it never waited
    assert isinstance(newcomer.exception(), Overloaded)
    assert not any(task.done() for task in waiting)  # nobody pushed out to make room

    # With two tenants active, the noisy one's share is half the queue: it is over it.
    over = _ask(admission, "noisy")
    await _settle()
    assert isinstance(over.exception(), TenantOverShare)
    assert admission.queued == 4
    for task in [*running, *waiting]:
        task.cancel()


async def test_room_kept_for_the_quiet_tenant_is_taken_at_once_even_with_the_queue_full() -> None:
    admission = _admission(max_load=2, max_queue=4)
    running = [_ask(admission, "noisy") for _ in range(2)]
    waiting = [_ask(admission, "noisy") for _ in range(4)]
    await _settle()
    refused = _ask(admission, "quiet")  # no room anywhere; and now the quiet tenant is active
    await _settle()
    assert isinstance(refused.exception(), Overloaded)

    running[0].result().release()  # the noisy tenant is at its cap (the quiet one keeps room for one)
    await _settle()
    assert not any(task.done() for task in waiting)
    quiet = _ask(admission, "quiet")
    await _settle()
    assert quiet.done()
    assert quiet.exception() is None

    running[1].result().release()  # the next slot goes to the noisy backlog, in order
    await _settle()
    assert waiting[0].done()
    assert not any(task.done() for task in waiting[1:])
    for task in waiting[1:]:
        task.cancel()


async def test_a_lone_tenant_may_fill_the_queue_and_then_gets_503() -> None:
    admission = _admission(max_load=1, max_queue=3)
    tasks = [_ask(admission, "only") for _ in range(1 + 3)]
    refused = _ask(admission, "only")
    await _settle()
    assert admission.queued == 3
    assert isinstance(refused.exception(), Overloaded)
    for task in tasks:
        task.cancel()


async def test_every_slot_is_used_while_requests_wait() -> None:
    """Eight tenants arriving at twice the capacity: a released slot is granted at once, so
    the replicas stay full while anybody waits, and a shed never follows a wait."""
    admission = _admission(replicas=3, max_load=4, max_queue=16)
    registry: PoolRegistry = admission.registry  # type: ignore[attr-defined]
    capacity = 12
    held: list[Lease] = []
    waiting: list[asyncio.Task[Lease]] = []
    for round_ in range(40):
        # Two arrivals per freed slot, from the tenants in turn.
        arrivals = [_ask(admission, f"tenant-{(round_ * 7 + i) % 8}") for i in range(2 * 3)]
        await _settle()
        for task in arrivals:
            if not task.done():
                waiting.append(task)
            elif task.exception() is None:
                held.append(task.result())
            else:
                assert isinstance(task.exception(), Overloaded | TenantOverShare)
        for task in [t for t in waiting if t.done()]:
            waiting.remove(task)
            assert task.exception() is None, "a request that waited was shed"
            held.append(task.result())
        in_flight = sum(replica.in_flight for replica in registry.replicas())
        assert in_flight == len(held)
        if waiting:
            assert in_flight == capacity
        for lease in held[:3]:  # three answers complete
            lease.release()
        del held[:3]
        await _settle()
    for task in waiting:
        task.cancel()


async def test_the_deadline_ends_a_wait_with_504() -> None:
    admission = _admission(max_load=1, max_queue=2)
    running = _ask(admission, "a")
    late = _ask(admission, "a", timeout_s=0.05)
    with pytest.raises(DeadlineExceeded):
        await late
    running.cancel()
