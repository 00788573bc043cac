"""Graceful shutdown: on SIGTERM, stop taking work, let what runs finish, then exit by itself.

1. Readiness answers 503 and new requests 503 with `Connection: close` (load balancers
   take this replica out; clients retry elsewhere).
2. Requests in flight, streams included, and those waiting for capacity run on for up to
   the drain budget.
3. Streams still open then end with a `server_shutting_down` error event, never a silent
   cut, and requests still waiting get a 503 `server_shutting_down`.
4. The server is told to exit (uvicorn alone would wait on an open stream for ever).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import GatewayError, ShuttingDown

__all__ = ["Drain", "DrainMiddleware", "Work"]

log = logging.getLogger(__name__)
_STREAM_END_GRACE_S = 2.0  # for cut streams to write their last event


class Work(Protocol):
    """What a drain waits for: requests waiting for capacity or running (admission knows both)."""

    def in_flight(self) -> int: ...
    async def wait_idle(self) -> None: ...
    def shed_all(self, error: Callable[[], GatewayError]) -> None: ...


class Drain:
    def __init__(self, budget_s: float, work: Work) -> None:
        self.budget_s = budget_s
        self.draining = False
        self.drained = False  # the server exits once it is (app/server.py)
        self._work = work
        self._stoppers: set[Callable[[], None]] = set()
        self._task: asyncio.Task[None] | None = None

    def begin(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.warning("shutting down: draining %d request(s) for up to %.0f s", self._work.in_flight(), self.budget_s)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="drain")

    def track_stream(self, stop: Callable[[], None]) -> Callable[[], None]:
        """Register a stream's way to end early; returns its unregistration."""
        self._stoppers.add(stop)
        return lambda: self._stoppers.discard(stop)

    async def _run(self) -> None:
        try:
            if not await self._idle_within(self.budget_s):
                log.warning("drain budget spent: ending %d open stream(s)", len(self._stoppers))
                self._work.shed_all(ShuttingDown)  # what still waits for capacity
                for stop in list(self._stoppers):
                    stop()
                await self._idle_within(_STREAM_END_GRACE_S)
        finally:
            log.warning("drained, %d request(s) still in flight: exiting", self._work.in_flight())
            self.drained = True

    async def _idle_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._work.wait_idle()
        except TimeoutError:
            return False
        return True


class DrainMiddleware:
    """While draining, every request but liveness gets 503 `server_shutting_down` and its
    connection closed."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        response = ShuttingDown().response()
        response.headers["connection"] = "close"
        await response(scope, receive, send)
