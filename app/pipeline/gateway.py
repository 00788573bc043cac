"""The gateway's request path once a body is validated: route, forward with retries, relay.

Retries (tenacity) happen only before the first byte reaches the client: after a connect
error, when no response headers came within the attempt's time, or when an engine answered
429/502/503/504. Each retry goes to another replica, after a full-jitter backoff, inside the
request's deadline and within the retry budget. An engine's Retry-After keeps new requests
off that replica until it is over.
"""

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from app.errors import (
    DeadlineExceeded,
    EngineUnreachable,
    GatewayError,
    NoEngineAvailable,
    Overloaded,
    RateLimited,
    TenantOverShare,
)
from app.observability.metrics import GatewayMetrics, on_stream_end
from app.pipeline.proxy import AttemptTimeout, Proxy, RetryableAnswer
from app.pools.choice import choose
from app.pools.registry import Lease, PoolRegistry, Replica
from app.reliability.admission import Admission
from app.reliability.deadlines import Deadline
from app.reliability.idempotency import Idempotency
from app.reliability.limits import RateLimiter, estimate_prompt_tokens, tokens_used
from app.reliability.retry_budget import RetryBudget
from app.settings import GatewaySettings
from protocol import tracing
from router import Decision

__all__ = ["Gateway", "request_id"]

log = logging.getLogger("app.route")
tracer = trace.get_tracer("switchyard.gateway")

_MAX_REQUEST_ID = 128
_ID_PREFIX = secrets.token_hex(8)  # per process: ids from several gateways never collide
_ids = itertools.count(1)
_RETRYABLE = (EngineUnreachable, AttemptTimeout, RetryableAnswer)


@dataclass(slots=True)
class _Call:
    """One client request on its way to an engine, and what its attempts have learned."""

    request: Request
    path: str
    model: str
    key: str
    body: bytes
    tenant: str
    rid: str
    deadline: Deadline
    tried: list[str] = field(default_factory=list)
    answer: RetryableAnswer | None = None  # the last engine answer worth retrying


@dataclass(slots=True)
class Gateway:
    settings: GatewaySettings
    registry: PoolRegistry
    proxy: Proxy
    budget: RetryBudget
    idempotency: Idempotency
    admission: Admission
    metrics: GatewayMetrics
    limiter: RateLimiter | None = None
    _background: set["asyncio.Task[None]"] = field(default_factory=set)

    def deadline(self, request: Request) -> Deadline:
        return Deadline.from_headers(
            request.headers, default_s=self.settings.request_timeout_s, max_s=self.settings.max_request_timeout_s
        )

    async def dispatch(
        self, request: Request, path: str, model: str, key: str, body: bytes, tenant: str, tokens: int = 0
    ) -> Response:
        """The answer to one request; `tokens`: its estimated cost for the tenant's rate limits."""
        try:
            if self.limiter is None:
                return await self._dispatch(request, path, model, key, body, tenant)
            return await self._limited(self.limiter, request, path, model, key, body, tenant, tokens)
        except (Overloaded, TenantOverShare, RateLimited) as shed:
            self.metrics.shed(shed.code).inc()
            raise

    async def _limited(
        self,
        limiter: RateLimiter,
        request: Request,
        path: str,
        model: str,
        key: str,
        body: bytes,
        tenant: str,
        tokens: int,
    ) -> Response:
        headers = await limiter.charge(tenant, tokens)

        def stream_ended(relayed: int, total: int | None) -> None:
            """A stream's cost: its reported usage, else the prompt's estimate and the events relayed."""
            used = total if total is not None else estimate_prompt_tokens(body) + relayed
            self._later(limiter.correct(tenant, used - tokens))

        on_stream_end(request.scope, stream_ended)
        try:
            response = await self._dispatch(request, path, model, key, body, tenant)
        except GatewayError:
            await limiter.correct(tenant, -tokens)  # no completion: the request counts, its tokens do not
            raise
        response.headers.update(headers)
        used = tokens_used(response)
        if used is not None:
            await limiter.correct(tenant, used - tokens)
        return response

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background (a stream's end may come as its task is cancelled)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dispatch(self, request: Request, path: str, model: str, key: str, body: bytes, tenant: str) -> Response:
        deadline = self.deadline(request)
        call = _Call(request, path, model, key, body, tenant, request_id(request), deadline)
        self.budget.record_request(time.monotonic())
        with tracing.span(tracer, "admission", attributes={"switchyard.tenant": tenant}) as span:
            entered = time.monotonic()
            decision, lease = await self.admission.admit(
                tenant, model, lambda: choose(self.registry, model, key, time.monotonic()), deadline
            )
            span.set_attribute("switchyard.queue_wait_s", time.monotonic() - entered)
        _trace_decision(decision)  # decided inside admission (again at each turn while it waited)
        try:  # the first attempt outside tenacity: most requests need no retry machinery
            return await self._attempt(call, decision, lease)
        except _RETRYABLE as failure:
            return await self._retry(call, failure)

    async def _retry(self, call: _Call, failure: Exception) -> Response:
        """Attempts after the first: tenacity's loop starts from the first attempt's failure."""
        first: Exception | None = failure
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_RETRYABLE),
            wait=wait_random_exponential(
                multiplier=self.settings.retry_backoff_s, max=self.settings.retry_backoff_max_s
            ),
            stop=self._stop(call.deadline),
            before_sleep=lambda state: log.info(
                "%s: retrying after %s", call.rid, state.outcome and state.outcome.exception()
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if first is not None:
                        failure, first = first, None
                        raise failure  # attempt 1, already made: its outcome decides the first wait
                    return await self._attempt_again(call)
        except RetryableAnswer as last:
            return last.response  # no retry left: the engine's own answer
        raise AssertionError("tenacity returns or raises")

    async def _attempt_again(self, call: _Call) -> Response:
        """A retry goes to a replica not tried yet, past admission (its lease counts all the same)."""
        if call.deadline.expired:
            raise DeadlineExceeded("The request reached its deadline before an engine could take it.")
        try:
            decision = choose(self.registry, call.model, call.key, time.monotonic(), exclude=call.tried)
            _trace_decision(decision)
        except NoEngineAvailable:
            if call.answer is not None:
                return call.answer.response  # every replica tried: what the last one said
            raise
        self.metrics.retries(decision.node.pool.name).inc()
        return await self._attempt(call, decision, decision.node.acquire(call.tenant))

    async def _attempt(self, call: _Call, decision: Decision[Replica], lease: Lease) -> Response:
        replica = decision.node
        if log.isEnabledFor(logging.INFO):  # the decision is explained only when logged
            fields = {"request_id": call.rid, "tenant": call.tenant, "route": call.path, "region": decision.region}
            fields |= {"replica": replica.id, "reason": decision.reason.value}
            log.info("%s %s -> %s", call.rid, call.path, decision, extra=fields)
        headers = {"x-request-id": call.rid, "x-route-region": decision.region, "x-route-replica": replica.id}
        call.tried.append(replica.name)
        attributes: dict[str, str | int] = {"switchyard.replica": replica.id, "switchyard.attempt": len(call.tried)}
        span: trace.Span = trace.INVALID_SPAN
        streamed = False
        try:
            # The span lasts as long as the attempt: for a stream, until its last event.
            with tracing.span(
                tracer, "upstream", kind=SpanKind.CLIENT, attributes=attributes, end_on_exit=False
            ) as span:
                response = await self.proxy.forward(
                    call.request,
                    lease,
                    call.path,
                    call.body,
                    headers,
                    deadline=call.deadline,
                    attempt_timeout=self.settings.attempt_timeout_s,
                )
                span.set_attribute("http.response.status_code", response.status_code)
                if span.is_recording() and isinstance(response, StreamingResponse):
                    on_stream_end(call.request.scope, lambda events, _: _end_stream_span(span, events))
                    streamed = True
                return response
        except (EngineUnreachable, AttemptTimeout) as failure:
            kind = "connect" if isinstance(failure, EngineUnreachable) else "timeout"
            self.metrics.engine_errors(replica.pool.name, replica.pool.region, kind).inc()
            raise
        except RetryableAnswer as answer:
            kind = "overloaded" if answer.response.status_code in (429, 503) else "server_error"
            self.metrics.engine_errors(replica.pool.name, replica.pool.region, kind).inc()
            call.answer = answer
            if answer.retry_after is not None:
                self.registry.router.hold(replica.name, time.monotonic() + answer.retry_after)
            raise
        finally:
            if not streamed:
                span.end()

    def _stop(self, deadline: Deadline) -> Callable[[RetryCallState], bool]:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.settings.max_attempts:
                return True
            if deadline.remaining() <= state.upcoming_sleep:
                return True
            return not self.budget.try_spend(time.monotonic())  # last: spent only on a real retry

        return stop


def _end_stream_span(span: trace.Span, events: int) -> None:
    span.set_attribute("switchyard.events", events)
    span.end()


def _trace_decision(decision: Decision[Replica]) -> None:
    """The routing decision as a span of its own, with its reasons."""
    with tracing.span(tracer, "route") as span:
        if span.is_recording():
            span.set_attributes(
                {
                    "switchyard.region": decision.region,
                    "switchyard.replica": decision.node.id,
                    "switchyard.reason": decision.reason.value,
                    "switchyard.home": decision.home,
                }
            )


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it sent a sane one, else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isascii() and given.isprintable():
        return given
    return f"{_ID_PREFIX}{next(_ids):x}"
