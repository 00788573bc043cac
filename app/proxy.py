"""Forwarding a request to a replica and relaying its answer, streams chunk by chunk.

Each forward is an attempt: it holds a share of the replica's load from the moment the
replica is chosen until the last byte of the answer, and reports how the replica did
(success, failure, or an admission rejection) to the router's outlier detection.
"""

import logging
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.engine_errors import normalize_error
from app.errors import EngineUnreachable, UpstreamFailed, UpstreamTimeout
from app.pools import Lease, Replica
from app.upstream import (
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from protocol import error_payload, sse_event
from protocol.asgi import cancel_on_disconnect
from router import Outcome

__all__ = ["SSE_HEADERS", "Proxy", "Report", "outcome_of_status"]

log = logging.getLogger(__name__)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_JSON_HEADERS = {"content-type": "application/json"}

Report = Callable[[Replica, Outcome], None]


def outcome_of_status(status: int) -> Outcome:
    """429 and 503 are an engine shedding load (alive, busy); other 5xx are failures."""
    if status in (429, 503):
        return Outcome.REJECTED
    return Outcome.FAILURE if status >= 500 else Outcome.SUCCESS


class _Attempt:
    """One request to one replica: its load share and its one report."""

    __slots__ = ("_lease", "_report", "replica")

    def __init__(self, replica: Replica, report: Report) -> None:
        self.replica = replica
        self._lease: Lease | None = replica.acquire()
        self._report = report

    def finish(self, outcome: Outcome) -> None:
        """The first call counts; later ones (cleanup paths) do nothing."""
        if self._lease is not None:
            self._lease.release()
            self._lease = None
            self._report(self.replica, outcome)


class _RelayResponse(StreamingResponse):
    """A stream that ends its attempt however the response ends, started or not."""

    def __init__(
        self, upstream: UpstreamResponse, attempt: _Attempt, body: AsyncIterator[bytes], headers: Mapping[str, str]
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._upstream = upstream
        self._attempt = attempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._upstream.close()
            self._attempt.finish(Outcome.ABANDONED)  # the client left mid-stream: no verdict on the engine


class Proxy:
    def __init__(self, client: UpstreamClient, report: Report) -> None:
        self._client = client
        self._report = report

    async def forward(
        self, request: Request, replica: Replica, path: str, body: bytes, headers: Mapping[str, str]
    ) -> Response:
        """Send `body` to `replica` and answer the client with what it says."""
        attempt = _Attempt(replica, self._report)
        streaming = False
        try:
            async with cancel_on_disconnect(request):
                upstream = await self._send(attempt, path, body)
                if upstream.status == 200 and upstream.content_type == "text/event-stream":
                    streaming = True
                    relay = self._relay(upstream, attempt)
                    return _RelayResponse(upstream, attempt, relay, {**SSE_HEADERS, **headers})
                data = await self._read(upstream, attempt)
        finally:
            if not streaming:
                attempt.finish(Outcome.ABANDONED)  # still open only when the client left first
        if upstream.status >= 400:
            data = normalize_error(upstream.status, data)
            relayed = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}  # an engine's backoff
            return Response(
                data, status_code=upstream.status, media_type="application/json", headers={**relayed, **headers}
            )
        return Response(data, status_code=upstream.status, media_type=upstream.content_type, headers=dict(headers))

    async def call(self, replica: Replica, path: str, body: bytes) -> tuple[int, bytes]:
        """A whole request and answer, for the gateway's own use of an engine."""
        attempt = _Attempt(replica, self._report)
        try:
            upstream = await self._send(attempt, path, body)
            return upstream.status, await self._read(upstream, attempt)
        finally:
            attempt.finish(Outcome.ABANDONED)

    async def _send(self, attempt: _Attempt, path: str, body: bytes) -> UpstreamResponse:
        replica = attempt.replica
        try:
            return await self._client.post(replica.url + path, body, _JSON_HEADERS)
        except UpstreamConnectError as exc:
            replica.mark_down(str(exc))
            attempt.finish(Outcome.FAILURE)
            raise EngineUnreachable(f"The engine {replica.id} is unreachable; retry shortly.") from exc
        except UpstreamTimeoutError as exc:
            attempt.finish(Outcome.FAILURE)
            raise UpstreamTimeout(f"The engine {replica.id} did not answer in time.") from exc
        except UpstreamError as exc:
            attempt.finish(Outcome.FAILURE)
            raise UpstreamFailed(f"The engine {replica.id} failed: {exc}") from exc

    async def _read(self, upstream: UpstreamResponse, attempt: _Attempt) -> bytes:
        replica = attempt.replica
        try:
            data = await upstream.read()
        except UpstreamTimeoutError as exc:
            attempt.finish(Outcome.FAILURE)
            raise UpstreamTimeout(f"The engine {replica.id} did not finish in time.") from exc
        except UpstreamError as exc:
            attempt.finish(Outcome.FAILURE)
            raise UpstreamFailed(f"The engine {replica.id} broke off its answer: {exc}") from exc
        attempt.finish(outcome_of_status(upstream.status))
        return data

    async def _relay(self, upstream: UpstreamResponse, attempt: _Attempt) -> AsyncIterator[bytes]:
        """Each chunk goes out as it arrives; a broken stream ends with an error event, never silently."""
        try:
            async for chunk in upstream.iter_chunks():
                yield chunk
        except UpstreamError as exc:
            log.warning("stream from %s broke: %s", attempt.replica.id, exc)
            attempt.finish(Outcome.FAILURE)
            yield sse_event(
                error_payload(f"The engine broke off the stream: {exc}", "server_error", code="upstream_error")
            )
        else:
            attempt.finish(Outcome.SUCCESS)
        finally:
            upstream.close()
