"""The pipeline's first three layers: idempotency, rate limits, admission.

Each wraps the mechanism of app/reliability in a layer: it takes a `Call`, does its part,
and hands the call to its `next` (or answers in its place).
"""

import asyncio
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

from fastapi.responses import Response

from app.errors import GatewayError, Overloaded, RateLimited, TenantOverShare
from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Forward, Handler, Placement
from app.pools.choice import choose
from app.pools.registry import PoolRegistry
from app.reliability.admission import Admission
from app.reliability.idempotency import Idempotency
from app.reliability.limits import RateLimiter, estimate_prompt_tokens, tokens_used

__all__ = ["Admitted", "Idempotent", "Limited"]


class Idempotent:
    """A request with an `Idempotency-Key` runs once; its repeats get the kept answer."""

    def __init__(self, idempotency: Idempotency, next: Handler) -> None:
        self._idempotency = idempotency
        self._next = next

    async def __call__(self, call: Call) -> Response:
        return await self._idempotency.run(
            call.request.headers, call.tenant, call.route, call.raw, partial(self._next, call)
        )


class Limited:
    """The tenant's requests and tokens per minute: charged the estimate before the call runs,
    corrected to the real usage once it is known (a stream's when it ends)."""

    def __init__(self, limiter: RateLimiter, metrics: GatewayMetrics, next: Handler) -> None:
        self._limiter = limiter
        self._metrics = metrics
        self._next = next
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, call: Call) -> Response:
        limiter, tenant, charged = self._limiter, call.tenant, call.tokens
        try:
            headers = await limiter.charge(tenant, charged)
        except RateLimited as shed:
            self._metrics.shed(shed.code).inc()
            raise

        def stream_ended(relayed: int, total: int | None) -> None:
            """A stream's cost: its reported usage, else the prompt's estimate and the events relayed."""
            used = total if total is not None else estimate_prompt_tokens(call.body) + relayed
            self._later(limiter.correct(tenant, used - charged))

        call.context.on_stream_end(stream_ended)
        try:
            response = await self._next(call)
        except GatewayError:
            await limiter.correct(tenant, -charged)  # no completion: the request counts, its tokens do not
            raise
        response.headers.update(headers)
        used = tokens_used(response)
        if used is not None:
            await limiter.correct(tenant, used - charged)
        return response

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` in the background (a stream's end may come as its task is cancelled)."""
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


class Admitted:
    """A replica with room for the call, at once or after a fair wait in the admission queue."""

    def __init__(self, admission: Admission, registry: PoolRegistry, metrics: GatewayMetrics, next: Forward) -> None:
        self._admission = admission
        self._registry = registry
        self._metrics = metrics
        self._next = next

    async def __call__(self, call: Call) -> Response:
        registry, model, key = self._registry, call.model, call.routing_key
        entered = time.monotonic()
        try:
            decision, lease = await self._admission.admit(
                call.tenant, model, lambda: choose(registry, model, key, time.monotonic()), call.deadline
            )
        except (Overloaded, TenantOverShare) as shed:
            self._metrics.shed(shed.code).inc()
            raise
        if call.context.span is not None:
            call.context.annotate({"switchyard.queue_wait_s": time.monotonic() - entered})
        return await self._next(call, Placement(decision, lease, 1))
