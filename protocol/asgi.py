"""Helpers for the HTTP servers that speak the protocol (the gateway and the engines)."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.requests import Request

__all__ = ["ClientDisconnected", "cancel_on_disconnect"]


class ClientDisconnected(Exception):
    """The client went away before its answer was ready."""


@asynccontextmanager
async def cancel_on_disconnect(request: Request) -> AsyncIterator[None]:
    """Cancel the enclosed work as soon as the client disconnects, raising ClientDisconnected.

    Enter it once the request body has been read: the next ASGI message is then
    the disconnect. One watcher task per request; the work itself runs in the
    caller's task, so nothing is copied or scheduled on the fast path.
    """
    current = asyncio.current_task()
    assert current is not None
    gone = False

    def on_disconnect(watch: "asyncio.Task[None]") -> None:
        nonlocal gone
        if not watch.cancelled() and watch.exception() is None:
            gone = True
            current.cancel()

    watch = asyncio.create_task(_disconnect(request))
    watch.add_done_callback(on_disconnect)
    try:
        yield
    except asyncio.CancelledError:
        if gone and current.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        watch.remove_done_callback(on_disconnect)
        watch.cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
