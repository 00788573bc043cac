"""Admission control: requests wait for capacity in a bounded queue, shared fairly by tenant.

Capacity is what the router calls saturation: every replica serving the model at its
`max_load`. A request that finds room (and nobody waiting) goes at once. Otherwise it waits:

- tenants take turns (round robin), each in arrival order;
- a tenant's share of the queue is an equal part among the active tenants (seen in the
  last `window_s`, or with requests running or waiting); over it, a newcomer is refused at
  once (429). A full queue refuses a newcomer (503; 429 if over its share). Nothing waiting
  is pushed out to make room: a shed answer is immediate, never given after a wait;
- while other tenants are active, a tenant's requests in flight are capped so each other
  tenant keeps room for one more than it has running: a quiet tenant is not stuck behind a
  noisy one's backlog;
- a request leaves the queue at its deadline (504, never dispatched) or after
  `queue_timeout_s` (503). Shed answers carry Retry-After (seconds, at most 120),
  `retry-after-ms` and `x-should-retry`, from the recent queue wait.
"""

import asyncio
import math
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from app.errors import DeadlineExceeded, GatewayError, Overloaded, TenantOverShare
from app.pools.registry import Lease, PoolRegistry, Replica
from app.reliability.deadlines import Deadline
from router import Decision, Reason

__all__ = ["Admission"]

Route = Callable[[], Decision[Replica]]
Admitted = tuple[Decision[Replica], Lease]


@dataclass(eq=False, slots=True)
class _Waiter:
    tenant: str
    model: str
    route: Route
    queued_at: float
    future: "asyncio.Future[Admitted]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Admission:
    def __init__(
        self, registry: PoolRegistry, *, max_queue: int, queue_timeout_s: float, window_s: float = 10.0
    ) -> None:
        self._registry = registry
        self._max_queue = max_queue
        self._queue_timeout_s = queue_timeout_s
        self._window_s = window_s
        self._queues: OrderedDict[str, deque[_Waiter]] = OrderedDict()  # in turn order
        self._queued = 0
        self._in_flight: Counter[str] = Counter()
        self._last_seen: dict[str, float] = {}
        self._wait_ms = 1000.0  # recent queue wait (EWMA): what Retry-After says
        self._empty = asyncio.Event()  # set while nobody waits
        self._empty.set()

    @property
    def queued(self) -> int:
        return self._queued

    def shed_all(self, error: Callable[[], GatewayError]) -> None:
        """Answer every waiting request with `error` (the drain budget is spent)."""
        for queue in list(self._queues.values()):
            for waiter in list(queue):
                self._drop(waiter)
                if not waiter.future.done():
                    waiter.future.set_exception(error())

    def lease(self, tenant: str, replica: Replica) -> Lease:
        """A share of `replica`'s load for one of `tenant`'s requests; every lease, retries'
        included, counts toward the tenant's requests in flight until it is released."""
        self._in_flight[tenant] += 1
        return Lease(replica, tenant, self._released)

    def _released(self, tenant: str) -> None:
        self._in_flight[tenant] -= 1
        if self._in_flight[tenant] <= 0:
            del self._in_flight[tenant]
        if self._queued:
            self.pump()

    def in_flight(self) -> int:
        """Requests waiting or running: what a drain waits for."""
        return self._queued + sum(r.in_flight for r in self._registry.replicas())

    async def wait_idle(self) -> None:
        """Returns once nothing waits and no replica has a request in flight."""
        while self._queued or any(r.in_flight for r in self._registry.replicas()):
            await self._empty.wait()
            await self._registry.wait_idle()

    async def admit(self, tenant: str, model: str, route: Route, deadline: Deadline) -> Admitted:
        """A decision and its replica's lease, at once or after waiting; or a shed error."""
        now = time.monotonic()
        self._last_seen[tenant] = now
        # Free room that nobody waiting could take (pump() runs at every release) is kept for
        # another tenant: a tenant with nobody waiting may take it, full queue or not.
        if tenant not in self._queues:
            decision = route()
            if self._fits(tenant, model, decision, now):
                return decision, self.lease(tenant, decision.node)
        waiter = self._enqueue(tenant, model, route, now)
        self.pump()  # its turn may be now: another tenant's turn can come before a backlog
        # Which bound ends the wait is decided now: timers may fire a little early.
        deadline_first = deadline.remaining() <= self._queue_timeout_s
        try:
            async with asyncio.timeout(min(deadline.remaining(), self._queue_timeout_s)):
                return await waiter.future
        except TimeoutError:
            self._drop(waiter)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                return waiter.future.result()  # granted as the timer fired: the grant stands (its lease is held)
            if deadline_first:
                raise DeadlineExceeded("The request reached its deadline while waiting for an engine.") from None
            raise Overloaded(self._retry_after_ms()) from None
        except asyncio.CancelledError:  # the client left while waiting
            self._drop(waiter)
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                waiter.future.result()[1].release()
            raise

    def pump(self) -> None:
        """Grant waiting requests, tenants in turn, while there is room."""
        now = time.monotonic()
        granted = True
        while self._queued and granted:
            granted = False
            for tenant, queue in list(self._queues.items()):
                waiter = queue[0]
                if waiter.future.done():  # gave up (deadline, client gone): leaving on its own
                    self._drop(waiter)
                    granted = True
                    break
                try:
                    decision = waiter.route()
                except GatewayError as exc:  # its model went away meanwhile
                    self._drop(waiter)
                    waiter.future.set_exception(exc)
                    granted = True
                    break
                if not self._fits(tenant, waiter.model, decision, now):
                    continue
                self._drop(waiter)
                waiter.future.set_result((decision, self.lease(tenant, decision.node)))
                self._wait_ms += 0.2 * ((now - waiter.queued_at) * 1000 - self._wait_ms)
                if tenant in self._queues:
                    self._queues.move_to_end(tenant)  # the others' turn first
                granted = True
                break

    def _fits(self, tenant: str, model: str, decision: Decision[Replica], now: float) -> bool:
        if decision.reason is Reason.OVERLOADED:
            return False
        limit = self._tenant_limit(tenant, model, now)
        return limit is None or self._in_flight[tenant] < limit

    def _tenant_limit(self, tenant: str, model: str, now: float) -> int | None:
        """Capacity less one more than each other active tenant has running (never below a fair share)."""
        others = self._others_running(tenant, now)
        if not others:
            return None
        capacity = self._registry.capacity(model)
        if capacity is None:
            return None
        share = math.ceil(capacity / (len(others) + 1))
        return max(share, capacity - sum(min(share, running + 1) for running in others))

    def _others_running(self, tenant: str, now: float) -> list[int]:
        """Requests in flight for each other active tenant; those gone quiet are forgotten."""
        others: list[int] = []
        for other, seen in list(self._last_seen.items()):
            if other == tenant:
                continue
            running = self._in_flight.get(other, 0)
            if now - seen > self._window_s and not running and other not in self._queues:
                del self._last_seen[other]
                continue
            others.append(running)
        return others

    def _enqueue(self, tenant: str, model: str, route: Route, now: float) -> _Waiter:
        queue = self._queues.get(tenant)
        active = len(self._others_running(tenant, now)) + 1
        if active > 1 and queue is not None and len(queue) >= max(1, self._max_queue // active):
            raise TenantOverShare(self._retry_after_ms())  # alone, a tenant's share is the whole queue
        if self._queued >= self._max_queue:
            raise Overloaded(self._retry_after_ms())
        waiter = _Waiter(tenant, model, route, now)
        self._queues.setdefault(tenant, deque()).append(waiter)
        self._queued += 1
        self._empty.clear()
        return waiter

    def _drop(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.tenant)
        if queue is None or waiter not in queue:
            return
        queue.remove(waiter)
        self._queued -= 1
        if not queue:
            del self._queues[waiter.tenant]
        if not self._queued:
            self._empty.set()

    def _retry_after_ms(self) -> int:
        return round(min(max(self._wait_ms, 50.0), 120_000.0))
