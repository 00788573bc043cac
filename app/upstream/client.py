"""What the gateway needs from an engine client: the `Upstream` protocol and its errors.

The gateway's own is `HttpUpstream` (aiohttp, app/upstream/http.py); `AsgiUpstream`
(app/upstream/asgi.py) calls engines that are ASGI apps in the same process, as the tests do.
`create_app` takes either.
"""

from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Protocol, Self

__all__ = [
    "Upstream",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeoutError",
]


class UpstreamError(Exception):
    """The engine could not be reached or broke off its answer."""


class UpstreamConnectError(UpstreamError):
    """No connection (refused, reset before headers, DNS): nothing reached the engine's model."""


class UpstreamTimeoutError(UpstreamError):
    """The engine did not answer in time."""


class UpstreamResponse(Protocol):
    """An engine's answer once its headers came: the body is read whole or streamed, once."""

    status: int
    headers: Mapping[str, str]

    @property
    def content_type(self) -> str: ...

    async def read(self) -> bytes:
        """The whole body (UpstreamError if it breaks off, UpstreamTimeoutError if it stalls)."""
        ...

    def iter_chunks(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive, without waiting to fill a buffer."""
        ...

    def close(self) -> None:
        """Done with the answer: an unread rest is dropped, so the engine stops."""
        ...


class Upstream(Protocol):
    """A client to engines, used inside `async with` (the app's lifespan)."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None: ...

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """POST and wait for the response headers; the body is the caller's to read or stream."""
        ...

    async def get(self, url: str, *, within: float, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """A small GET read whole, within `within` seconds (health and model probes)."""
        ...
