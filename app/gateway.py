"""The gateway's request path once a body is validated: route, forward with retries, relay.

Retries (tenacity) happen only before the first byte reaches the client: after a connect
error, when no response headers came within the attempt's time, or when an engine answered
429/502/503/504. Each retry goes to another replica, after a full-jitter backoff, inside the
request's deadline and within the retry budget. An engine's Retry-After keeps new requests
off that replica until it is over.
"""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import Response
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from app.admission import Admission
from app.deadlines import Deadline
from app.errors import DeadlineExceeded, EngineUnreachable, NoEngineAvailable
from app.idempotency import Idempotency
from app.pools import Lease, PoolRegistry, Replica
from app.proxy import AttemptTimeout, Proxy, RetryableAnswer
from app.retry_budget import RetryBudget
from app.routing import choose
from app.settings import GatewaySettings
from router import Decision

__all__ = ["Gateway", "request_id"]

log = logging.getLogger("app.route")

_MAX_REQUEST_ID = 128
_RETRYABLE = (EngineUnreachable, AttemptTimeout, RetryableAnswer)


@dataclass(slots=True)
class _Tries:
    """What one request's attempts have learned so far."""

    tried: list[str] = field(default_factory=list)
    answer: RetryableAnswer | None = None  # the last engine answer worth retrying
    admitted: tuple[Decision[Replica], Lease] | None = None  # for the first attempt


@dataclass(slots=True)
class Gateway:
    settings: GatewaySettings
    registry: PoolRegistry
    proxy: Proxy
    budget: RetryBudget
    idempotency: Idempotency
    admission: Admission

    def deadline(self, request: Request) -> Deadline:
        return Deadline.from_headers(
            request.headers, default_s=self.settings.request_timeout_s, max_s=self.settings.max_request_timeout_s
        )

    async def dispatch(self, request: Request, path: str, model: str, key: str, body: bytes, tenant: str) -> Response:
        rid = request_id(request)
        deadline = self.deadline(request)
        self.budget.record_request(time.monotonic())
        tries = _Tries()
        tries.admitted = await self.admission.admit(
            tenant, model, lambda: choose(self.registry, model, key, time.monotonic()), deadline
        )
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RETRYABLE),
            wait=wait_random_exponential(
                multiplier=self.settings.retry_backoff_s, max=self.settings.retry_backoff_max_s
            ),
            stop=self._stop(deadline),
            before_sleep=lambda state: log.info(
                "%s: retrying after %s", rid, state.outcome and state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._attempt(request, path, model, key, body, rid, deadline, tries, tenant)
        except RetryableAnswer as last:
            return last.response  # no retry left: the engine's own answer
        raise AssertionError("tenacity returns or raises")

    async def _attempt(
        self,
        request: Request,
        path: str,
        model: str,
        key: str,
        body: bytes,
        rid: str,
        deadline: Deadline,
        tries: _Tries,
        tenant: str,
    ) -> Response:
        if tries.admitted is not None:
            (decision, lease), tries.admitted = tries.admitted, None
        else:
            if deadline.expired:
                raise DeadlineExceeded("The request reached its deadline before an engine could take it.")
            try:
                decision = choose(self.registry, model, key, time.monotonic(), exclude=tries.tried)
            except NoEngineAvailable:
                if tries.answer is not None:
                    return tries.answer.response  # every replica tried: what the last one said
                raise
            lease = decision.node.acquire(tenant)
        replica = decision.node
        log.info("%s %s -> %s", rid, path, decision)  # explained only when logged
        headers = {"x-request-id": rid, "x-route-region": decision.region, "x-route-replica": replica.id}
        tries.tried.append(replica.name)
        try:
            return await self.proxy.forward(
                request,
                lease,
                path,
                body,
                headers,
                deadline=deadline,
                attempt_timeout=self.settings.attempt_timeout_s,
            )
        except RetryableAnswer as answer:
            tries.answer = answer
            if answer.retry_after is not None:
                self.registry.router.hold(replica.name, time.monotonic() + answer.retry_after)
            raise

    def _stop(self, deadline: Deadline) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.settings.max_attempts:
                return True
            if deadline.remaining() <= state.upcoming_sleep:
                return True
            return not self.budget.try_spend(time.monotonic())  # last: spent only on a real retry

        return stop


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it sent a sane one, else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable():
        return given
    return uuid.uuid4().hex
