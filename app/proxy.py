"""Forwarding a request to a replica and relaying its answer, streams chunk by chunk."""

import logging
from collections.abc import AsyncIterator, Mapping

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.engine_errors import normalize_error
from app.errors import NoEngineAvailable, UpstreamFailed, UpstreamTimeout
from app.pools import Replica
from app.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from protocol import error_payload, sse_event
from protocol.asgi import cancel_on_disconnect

__all__ = ["SSE_HEADERS", "Proxy"]

log = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_JSON_HEADERS = {"content-type": "application/json"}


class Proxy:
    def __init__(self, client: UpstreamClient) -> None:
        self._client = client

    async def forward(
        self, request: Request, replica: Replica, path: str, body: bytes, headers: Mapping[str, str]
    ) -> Response:
        """Send `body` to `replica` and answer the client with what it says."""
        async with cancel_on_disconnect(request):
            upstream = await self._send(replica, path, body)
            if upstream.status == 200 and upstream.content_type == "text/event-stream":
                return StreamingResponse(
                    self._relay(upstream, replica),
                    media_type="text/event-stream",
                    headers={**SSE_HEADERS, **headers},
                )
            data = await self._read(upstream, replica)
        if upstream.status >= 400:
            data = normalize_error(upstream.status, data)
            relayed = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}  # an engine's backoff
            return Response(
                data, status_code=upstream.status, media_type="application/json", headers={**relayed, **headers}
            )
        return Response(data, status_code=upstream.status, media_type=upstream.content_type, headers=dict(headers))

    async def call(self, replica: Replica, path: str, body: bytes) -> tuple[int, bytes]:
        """A whole request and answer, for the gateway's own use of an engine."""
        upstream = await self._send(replica, path, body)
        return upstream.status, await self._read(upstream, replica)

    async def _read(self, upstream: UpstreamResponse, replica: Replica) -> bytes:
        with replica.track():
            try:
                return await upstream.read()
            except UpstreamTimeoutError as exc:
                raise UpstreamTimeout(f"The engine {replica.id} did not finish in time.") from exc
            except UpstreamError as exc:
                raise UpstreamFailed(f"The engine {replica.id} broke off its answer: {exc}") from exc

    async def _send(self, replica: Replica, path: str, body: bytes) -> UpstreamResponse:
        with replica.track():
            try:
                return await self._client.post(replica.url + path, body, _JSON_HEADERS)
            except UpstreamConnectError as exc:
                replica.mark_down(str(exc))
                raise NoEngineAvailable(f"The engine {replica.id} is unreachable; retry shortly.") from exc
            except UpstreamTimeoutError as exc:
                raise UpstreamTimeout(f"The engine {replica.id} did not answer in time.") from exc
            except UpstreamError as exc:
                raise UpstreamFailed(f"The engine {replica.id} failed: {exc}") from exc

    async def _relay(self, upstream: UpstreamResponse, replica: Replica) -> AsyncIterator[bytes]:
        """Each chunk goes out as it arrives; a broken stream ends with an error event, never silently."""
        with replica.track():
            try:
                async for chunk in upstream.iter_chunks():
                    yield chunk
            except UpstreamError as exc:
                log.warning("stream from %s broke: %s", replica.id, exc)
                yield sse_event(
                    error_payload(f"The engine broke off the stream: {exc}", "server_error", code="upstream_error")
                )
            finally:
                upstream.close()
