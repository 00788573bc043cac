"""Forwarding a request to a replica and relaying its answer, streams chunk by chunk.

Each forward is an attempt: it holds a share of the replica's load from the moment the
replica is chosen until the last byte of the answer, and reports how the replica did
(success, failure, or an admission rejection) to the router's outlier detection.

What an attempt may raise before anything reached the client is `Retryable`: the gateway
decides whether another replica gets the request. Everything after the first byte is final.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.errors import DeadlineExceeded, EngineUnreachable, UpstreamFailed, UpstreamTimeout
from app.observability.metrics import GatewayMetrics, StreamTimer
from app.pipeline.call import Call
from app.pools.registry import Lease, Replica
from app.reliability.deadlines import Deadline
from app.reliability.drain import Drain
from app.upstream.client import (
    Upstream,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeoutError,
)
from app.upstream.engine_errors import normalize_error
from protocol import SEQUENCE_FAILED, SSE_HEADERS, error_payload, sse_event
from protocol.asgi import CancelOnDisconnect
from router import Outcome

__all__ = [
    "RETRYABLE_STATUSES",
    "AttemptTimeout",
    "Proxy",
    "Report",
    "RetryableAnswer",
    "outcome_of_status",
    "retry_after_s",
]

log = logging.getLogger(__name__)

_JSON_HEADERS = {"content-type": "application/json"}

Report = Callable[[Replica, Outcome], None]

# An engine's answers that another replica may well not give.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
_REFUSED_KEY = frozenset({401, 403})


def sequence_failed(body: bytes) -> bool:
    """Whether an engine's 500 is its mark of one request's failure (its batch went on)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):
        return False
    return isinstance(error, dict) and error.get("code") == SEQUENCE_FAILED


def _typeless(body: bytes) -> bytes:
    """An engine's error without its `type`, so the gateway's envelope gives the status's own."""
    payload = json.loads(body)
    payload["error"].pop("type", None)
    return json.dumps(payload).encode()


class AttemptTimeout(UpstreamTimeout):
    """No response headers within the attempt's time: nothing reached the client yet."""


class RetryableAnswer(Exception):
    """An engine's 429/502/503/504, read whole and not yet sent: relayed if no retry is left."""

    def __init__(self, response: Response, retry_after: float | None) -> None:
        super().__init__(f"engine answered {response.status_code}")
        self.response = response
        self.retry_after = retry_after


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """An engine's `Retry-After` in seconds (the HTTP-date form is not used by engines)."""
    value = headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 3600 else None


def outcome_of_status(status: int, body: bytes = b"") -> Outcome:
    """429 and 503 are an engine shedding load (alive, busy); other 5xx are failures, and so are
    401/403 (the engine refuses the gateway's key: it cannot serve anyone). Other 4xx are the
    request's fault and never count against the replica, nor does a 500 the engine marks as one
    request's failure (`sequence_failed`: its batch went on)."""
    if status in (429, 503):
        return Outcome.REJECTED
    if status == 500 and sequence_failed(body):
        return Outcome.SUCCESS
    return Outcome.FAILURE if status >= 500 or status in _REFUSED_KEY else Outcome.SUCCESS


class _Verdict:
    """One request to one replica: its load share, released once with its one report."""

    __slots__ = ("_lease", "_report", "replica")

    def __init__(self, lease: Lease, report: Report) -> None:
        assert lease.replica is not None, "a released lease"
        self.replica: Replica = lease.replica
        self._lease: Lease | None = lease
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
        self,
        upstream: UpstreamResponse,
        attempt: _Verdict,
        timer: StreamTimer,
        body: AsyncIterator[bytes],
        headers: Mapping[str, str],
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._upstream = upstream
        self._attempt = attempt
        self._timer = timer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._upstream.close()
            self._attempt.finish(Outcome.ABANDONED)  # the client left mid-stream: no verdict on the engine
            self._timer.closed()  # also when the client left before the stream began
            # A client that left mid-stream leaves the body's generators suspended: close them now
            # (an idempotency claim is released at once), not whenever they are collected.
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                with contextlib.suppress(RuntimeError):  # still running elsewhere: it ends by itself
                    await close()


_EARLY_END = {
    "deadline": error_payload("The request reached its deadline.", "server_error", code="deadline_exceeded"),
    "shutdown": error_payload(
        "The gateway is shutting down; retry the request.", "server_error", code="server_shutting_down"
    ),
}


def _events_end(data: bytes) -> int:
    """Where the last complete SSE event in `data` ends (0: none is complete)."""
    lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class Proxy:
    """`attempt_timeout_s`: how long an attempt may wait for an engine's response headers
    (None: the request's deadline alone)."""

    def __init__(
        self,
        upstream: Upstream,
        report: Report,
        drain: Drain,
        metrics: GatewayMetrics,
        attempt_timeout_s: float | None = None,
    ) -> None:
        self._upstream = upstream
        self._report = report
        self._drain = drain
        self._metrics = metrics
        self._attempt_timeout_s = attempt_timeout_s

    async def forward(self, call: Call, lease: Lease, headers: Mapping[str, str]) -> Response:
        """Send the call's body to the leased replica and answer the client with what it says;
        the lease is released when the answer ends.

        `headers` go back to the client; its `x-request-id` also goes to the engine (vLLM
        takes it as its own request id), so logs on both sides name the same request.
        """
        attempt = _Verdict(lease, self._report)
        deadline, context = call.deadline, call.context
        streaming = False
        pool = attempt.replica.pool
        upstream_headers = {**_JSON_HEADERS, **pool.auth, "x-request-id": headers["x-request-id"]}
        context.pass_trace_on(upstream_headers)  # the engine's spans join the request's trace
        sent = time.perf_counter()
        try:
            async with CancelOnDisconnect(call.request):
                upstream, data = await self._exchange(attempt, call.path, call.body, upstream_headers, deadline)
                if data is None:
                    streaming = True
                    timer = self._metrics.stream(context, pool.name, pool.region)
                    relay = self._relay(upstream, attempt, deadline, timer)
                    return _RelayResponse(upstream, attempt, timer, relay, {**SSE_HEADERS, **headers})
        finally:
            if not streaming:
                attempt.finish(Outcome.ABANDONED)  # still open only when the client left first
        if upstream.status < 400:
            self._metrics.answered(context, pool.name, pool.region, data, time.perf_counter() - sent)
            return Response(data, status_code=upstream.status, media_type=upstream.content_type, headers=dict(headers))
        if upstream.status in _REFUSED_KEY:  # never the client's token: the gateway sends its own
            log.error("replica %s refused the gateway's credentials (%d): check pool %s's api_key", attempt.replica.id,
                      upstream.status, pool.name)  # fmt: skip
            raise UpstreamFailed(f"The engine {attempt.replica.id} refused the gateway's credentials.")
        retry_after = retry_after_s(upstream.headers)
        relayed = {"retry-after": upstream.headers["retry-after"]} if retry_after is not None else {}
        status, error = upstream.status, normalize_error(upstream.status, data)
        if status == 500 and sequence_failed(data):
            # The request's own failure, as the engine tells it: a 4xx, as every request error is.
            status, error = 422, normalize_error(422, _typeless(data))
        response = Response(error, status_code=status, media_type="application/json", headers={**relayed, **headers})
        if status in RETRYABLE_STATUSES:
            raise RetryableAnswer(response, retry_after)  # counted by the gateway, which may retry it
        if status >= 500:
            self._metrics.engine_errors(pool.name, pool.region, "server_error").inc()
        return response

    async def _exchange(
        self, attempt: _Verdict, path: str, body: bytes, headers: Mapping[str, str], deadline: Deadline
    ) -> tuple[UpstreamResponse, bytes | None]:
        """Send `body` and read the answer whole, or for a stream only its headers (data None).

        One timer for both: the attempt's time until the headers, then the request's deadline.
        """
        replica = attempt.replica
        most = self._attempt_timeout_s
        within = deadline.remaining() if most is None else min(most, deadline.remaining())
        answered = False
        try:
            async with asyncio.timeout(within) as limit:
                upstream = await self._upstream.post(replica.url + path, body, headers)
                answered = True
                if upstream.status == 200 and upstream.content_type == "text/event-stream":
                    return upstream, None
                if most is not None:  # the attempt's time was until the headers: the rest has the deadline's
                    limit.reschedule(asyncio.get_running_loop().time() + deadline.remaining())
                data = await upstream.read()
        except UpstreamConnectError as exc:
            if replica.mark_down(str(exc)):
                log.warning("replica %s (%s) is down: the connection failed: %s", replica.id, replica.url, exc)
            attempt.finish(Outcome.FAILURE)
            raise EngineUnreachable(f"The engine {replica.id} is unreachable; retry shortly.") from exc
        except (TimeoutError, UpstreamTimeoutError) as exc:
            if deadline.expired:  # the request's own deadline (its client may set it): as for a stream, not a fault
                attempt.finish(Outcome.ABANDONED)
                raise DeadlineExceeded("The request reached its deadline before the engine answered.") from exc
            attempt.finish(Outcome.FAILURE)
            if answered:
                raise UpstreamTimeout(f"The engine {replica.id} did not finish in time.") from exc
            raise AttemptTimeout(f"The engine {replica.id} did not answer within {within:.1f} s.") from exc
        except UpstreamError as exc:
            attempt.finish(Outcome.FAILURE)
            if answered:
                log.warning("answer from %s broke: %s (%s)", replica.id, exc, exc.__cause__)
            raise UpstreamFailed(f"The engine {replica.id} failed: {exc}.") from exc
        attempt.finish(outcome_of_status(upstream.status, data or b""))
        return upstream, data

    async def _relay(
        self, upstream: UpstreamResponse, attempt: _Verdict, deadline: Deadline, timer: StreamTimer
    ) -> AsyncIterator[bytes]:
        """Each chunk goes out as it arrives; a stream that breaks, reaches its deadline or outlives
        the shutdown drain ends with an error event, never silently.

        The deadline and the drain end a stream by closing the upstream response (a timeout
        scope cannot span the generator's yields); the read then fails and the event says why.
        """
        ended_by: str | None = None

        def cut_short(reason: str) -> None:
            nonlocal ended_by
            ended_by = ended_by or reason
            upstream.close()

        watchdog = asyncio.get_running_loop().call_later(max(deadline.remaining(), 0), cut_short, "deadline")
        untrack = self._drain.track_stream(lambda: cut_short("shutdown"))
        pending = b""  # the start of an event not yet complete: held back, so a break never splits one
        try:
            async for chunk in upstream.iter_chunks():
                data = pending + chunk if pending else chunk
                end = _events_end(data)
                pending = data[end:]
                if end:
                    timer.relayed(data[:end])
                    yield data[:end]
            if ended_by:  # closing may read as a clean end: it was not
                raise UpstreamError(ended_by)
            if pending:
                yield pending  # a last event without its blank line: the engine's to answer for
        except UpstreamError as exc:
            if ended_by:
                log.warning("stream from %s ended early: %s", attempt.replica.id, ended_by)
                attempt.finish(Outcome.ABANDONED)
                yield sse_event(_EARLY_END[ended_by])
            else:
                log.warning("stream from %s broke: %s (%s)", attempt.replica.id, exc, exc.__cause__)
                attempt.finish(Outcome.FAILURE)
                pool = attempt.replica.pool
                self._metrics.engine_errors(pool.name, pool.region, "stream_broken").inc()
                yield sse_event(
                    error_payload(
                        f"The stream was cut short: {exc}. Retry the request.", "server_error", code="upstream_error"
                    )
                )
        else:
            attempt.finish(Outcome.SUCCESS)
            timer.ended()
        finally:
            watchdog.cancel()
            untrack()
            upstream.close()
            timer.closed()
