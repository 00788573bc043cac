"""Retries: another replica gets the call when its attempt failed before the first byte.

Retries (tenacity) happen only before anything reached the client: after a connect error,
when no response headers came within the attempt's time, or when an engine answered
429/502/503/504. Each retry goes to a replica not tried yet, after a full-jitter backoff,
inside the request's deadline and within the retry budget.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.responses import Response
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from app.errors import DeadlineExceeded, EngineUnreachable, NoEngineAvailable
from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Forward, Placement
from app.pipeline.proxy import AttemptTimeout, RetryableAnswer
from app.pools.choice import choose
from app.pools.registry import PoolRegistry
from app.reliability.admission import Admission
from app.reliability.deadlines import Deadline
from app.reliability.retry_budget import RetryBudget

__all__ = ["RETRYABLE", "RetryPolicy", "Retrying"]

log = logging.getLogger("app.route")

RETRYABLE = (EngineUnreachable, AttemptTimeout, RetryableAnswer)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff_s: float  # the full-jitter backoff's base
    backoff_max_s: float


@dataclass(slots=True)
class _Tries:
    """What one call's attempts have learned."""

    tried: list[str]  # replicas, by name
    answer: RetryableAnswer | None = None  # the last engine answer worth retrying


class Retrying:
    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        admission: Admission,
        registry: PoolRegistry,
        metrics: GatewayMetrics,
        next: Forward,
    ) -> None:
        self._policy = policy
        self._budget = budget
        self._admission = admission
        self._registry = registry
        self._metrics = metrics
        self._next = next

    async def __call__(self, call: Call, placement: Placement) -> Response:
        self._budget.record_request(time.monotonic())
        try:  # the first attempt outside tenacity: most requests need no retry machinery
            return await self._next(call, placement)
        except RETRYABLE as failure:
            tries = _Tries([placement.decision.node.name])
            if isinstance(failure, RetryableAnswer):
                tries.answer = failure
            return await self._retry(call, tries, failure)

    async def _retry(self, call: Call, tries: _Tries, failure: Exception) -> Response:
        """Attempts after the first: tenacity's loop starts from the first attempt's failure."""
        first: Exception | None = failure
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RETRYABLE),
            wait=wait_random_exponential(multiplier=self._policy.backoff_s, max=self._policy.backoff_max_s),
            stop=self._stop(call.deadline),
            before_sleep=lambda state: log.info(
                "%s: retrying after %s", call.context.request_id, state.outcome and state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:
                        failure, first = first, None
                        raise failure  # attempt 1, already made: its outcome decides the first wait
                    return await self._again(call, tries, attempt.retry_state.attempt_number)
        except RetryableAnswer as last:
            return last.response  # no retry left: the engine's own answer
        raise AssertionError("tenacity returns or raises")

    async def _again(self, call: Call, tries: _Tries, number: int) -> Response:
        """A retry goes to a replica not tried yet, past admission (its lease counts all the same)."""
        if call.deadline.expired:
            raise DeadlineExceeded("The request reached its deadline before an engine could take it.")
        try:
            decision = choose(self._registry, call.model, call.routing_key, time.monotonic(), exclude=tries.tried)
        except NoEngineAvailable:
            if tries.answer is not None:
                return tries.answer.response  # every replica tried: what the last one said
            raise
        replica = decision.node
        self._metrics.retries(replica.pool.name).inc()
        tries.tried.append(replica.name)
        try:
            return await self._next(call, Placement(decision, self._admission.lease(call.tenant, replica), number))
        except RetryableAnswer as answer:
            tries.answer = answer
            raise

    def _stop(self, deadline: Deadline) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self._policy.max_attempts:
                return True
            if deadline.remaining() <= state.upcoming_sleep:
                return True
            return not self._budget.try_spend(time.monotonic())  # last: spent only on a real retry

        return stop
