"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for the completion routes.

Scope: (tenant, route, key). A request's fingerprint is the sha256 of its canonical JSON
body. The first request claims the key; a duplicate while it runs gets 409; the same key
with another body gets 422; once the answer is complete it is kept (status, headers, body;
a stream's exact events) for the retention period and replayed with
`Idempotent-Replayed: true`. A request that fails before its first byte (or whose answer
is worth retrying: 408, 409, 429, 5xx; or whose stream broke) releases the key.

An answer, once acknowledged, never changes: it is kept before the client gets it (a whole
answer before it is sent, a stream before its final `[DONE]`), retrying while the store is
down and keeping the claim alive, up to `settle_timeout_s`; past that the client gets an error
instead (503 `idempotency_unavailable`, or an error event in place of `[DONE]`), so a later
retry may run the request again without contradicting anything the client was told. An answer
too large to keep is remembered as such: its retries get 422 rather than another answer.
"""

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable

import orjson
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import Headers

from app.errors import (
    GatewayError,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    IdempotencyUnavailable,
    InvalidRequest,
)
from app.reliability.idempotency_store import Claim, IdempotencyStore, StoredAnswer, StoreFull, StoreUnavailable
from protocol import error_payload, sse_event

__all__ = ["KEY_HEADER", "REPLAYED_HEADER", "Idempotency", "fingerprint", "parse_key"]

log = logging.getLogger(__name__)

KEY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
_MAX_KEY_CHARS = 255
_KEPT_HEADERS = frozenset({b"content-type", b"x-request-id", b"x-route-region", b"x-route-replica"})
_RELEASED_STATUSES = frozenset({408, 409, 429})
_STREAM_DONE = b"data: [DONE]"
_LONG_NUMBER = re.compile(rb"\d{20}")  # may be past 64 bits
_SETTLE_FIRST_WAIT_S, _SETTLE_MAX_WAIT_S = 0.05, 1.0
_NOT_KEPT = StoredAnswer(
    422,
    {"content-type": "application/json"},
    json.dumps(
        error_payload(
            "The answer to this Idempotency-Key was too large to keep, so it cannot be replayed.",
            "invalid_request_error",
            param="Idempotency-Key",
            code="idempotent_answer_not_kept",
        )
    ).encode(),
)


def parse_key(value: str) -> str:
    """The key: a structured-fields string (`"..."`, as the draft writes it) or a bare token."""
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    visible_ascii = key.isascii() and key.isprintable() and " " not in key
    if not 0 < len(key) <= _MAX_KEY_CHARS or not visible_ascii:
        raise _malformed()
    return key


def _malformed() -> InvalidRequest:
    error = InvalidRequest(
        f"Idempotency-Key must be 1 to {_MAX_KEY_CHARS} visible ASCII characters.", param="Idempotency-Key"
    )
    error.code = "invalid_idempotency_key"
    return error


def _ambiguous() -> InvalidRequest:
    error = InvalidRequest("Send one Idempotency-Key header, not several.", param="Idempotency-Key")
    error.code = "invalid_idempotency_key"
    return error


def fingerprint(body: bytes) -> str:
    """sha256 of the body as canonical JSON: key order and white space do not count.

    orjson does it at a fifth of the json module's cost. It reads an integer past 64 bits as
    a float (two such bodies could then look alike) and refuses NaN: a body with a run of 20
    digits or more, or one orjson refuses, is canonicalized by the json module instead (a
    body always takes the same way)."""
    if _LONG_NUMBER.search(body) is None:
        try:
            return hashlib.sha256(orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)).hexdigest()
        except orjson.JSONDecodeError:
            pass
    text = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Idempotency:
    def __init__(
        self,
        store: IdempotencyStore,
        *,
        lease_s: float,
        retention_s: float,
        max_answer_bytes: int,
        settle_timeout_s: float = 10.0,
        on_replay: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_replay = on_replay
        self.store = store
        self._lease_ms = int(lease_s * 1000)
        self._retention_ms = int(retention_s * 1000)
        self._max_answer_bytes = max_answer_bytes
        self._settle_timeout_s = settle_timeout_s
        self._releasing: set[asyncio.Task[None]] = set()
        self._running: dict[str, str] = {}  # key -> owner, for the claims of requests running now
        self._renewer: asyncio.Task[None] | None = None

    async def run(
        self, headers: Headers, tenant: str, route: str, body: bytes, handler: Callable[[], Awaitable[Response]]
    ) -> Response:
        """`handler`'s answer, or the one kept for the request's key; `body`: what the key's fingerprint covers."""
        raw = headers.get(KEY_HEADER)
        if raw is None:
            return await handler()
        if len(headers.getlist(KEY_HEADER)) > 1:  # which one the client meant is anyone's guess
            raise _ambiguous()
        key = hashlib.sha256(f"{tenant}\x1f{route}\x1f{parse_key(raw)}".encode()).hexdigest()
        request_print = fingerprint(body)
        try:
            claim = await self.store.claim(key, request_print, self._lease_ms, tenant=tenant)
        except StoreFull as exc:
            log.warning("%s", exc)
            raise IdempotencyUnavailable(f"{exc} Retry later, or without an Idempotency-Key.") from exc
        except StoreUnavailable as exc:
            log.warning("idempotency store unavailable: %s", exc)
            raise IdempotencyUnavailable() from exc
        if claim.outcome != "claimed":
            return self._held(claim, request_print)
        return await self._execute(key, claim.owner, request_print, tenant, handler)

    def _held(self, claim: Claim, request_print: str) -> Response:
        """The answer for a key another request holds: its kept answer, or why there is none yet."""
        if claim.fingerprint != request_print:
            raise IdempotencyKeyReused()
        if claim.answer is None:
            raise IdempotencyKeyInUse()
        answer = claim.answer
        self.on_replay()
        return Response(answer.body, status_code=answer.status, headers={**answer.headers, REPLAYED_HEADER: "true"})

    async def _execute(
        self, key: str, owner: str, request_print: str, tenant: str, handler: Callable[[], Awaitable[Response]]
    ) -> Response:
        self._running[key] = owner
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(), name="idempotency-renewer")
        try:
            response = await handler()
        except BaseException:
            self._release(key, owner)
            raise
        if isinstance(response, StreamingResponse):
            recording = self._record(key, owner, request_print, tenant, response, response.body_iterator)
            response.body_iterator = _Unstarted(recording, lambda: self._release(key, owner))
            return response
        try:
            answer = self._answer(response, bytes(response.body))
        except BaseException:
            self._release(key, owner)
            raise
        if answer is None:
            self._release(key, owner)
            return response
        holder = await self._keep(key, owner, request_print, tenant, answer)  # releases the key itself if not kept
        return response if holder is None else self._held(holder, request_print)

    async def _record(
        self,
        key: str,
        owner: str,
        request_print: str,
        tenant: str,
        response: StreamingResponse,
        source: AsyncIterable[str | bytes | memoryview],
    ) -> AsyncGenerator[bytes, None]:
        """The stream as it goes to the client, kept whole before its final `[DONE]` goes out."""
        chunks: list[bytes] = []
        size, settled = 0, False
        try:
            async for chunk in source:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                size += len(data)
                if size <= self._max_answer_bytes:
                    chunks.append(data)
                elif chunks:
                    chunks.clear()  # too large to keep: hold none of it
                done = _done_at(data)
                if done is None:
                    yield data
                    continue
                if done:
                    yield data[:done]
                answer = self._answer(response, b"".join(chunks)) if size <= self._max_answer_bytes else _NOT_KEPT
                settled = True
                if answer is None:
                    self._release(key, owner)
                else:
                    try:
                        holder = await self._keep(key, owner, request_print, tenant, answer)
                    except GatewayError as error:
                        yield sse_event(error_payload(error.message, error.type, code=error.code))
                        return
                    if holder is not None:  # too late: what the key holds is not this stream
                        yield sse_event(_superseded(holder, request_print))
                        return
                yield data[done:]
        finally:
            if not settled:  # broke off, or the client left, before [DONE]
                self._release(key, owner)

    def _answer(self, response: Response, body: bytes) -> StoredAnswer | None:
        """What to keep, or None for an answer worth retrying."""
        status = response.status_code
        if status >= 500 or status in _RELEASED_STATUSES:
            return None
        if len(body) > self._max_answer_bytes:
            return _NOT_KEPT
        # latin-1: what HTTP headers are on the wire; it decodes any byte, so keeping never fails.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.raw_headers if k in _KEPT_HEADERS}
        return StoredAnswer(status, headers, body)

    async def _keep(self, key: str, owner: str, request_print: str, tenant: str, answer: StoredAnswer) -> Claim | None:
        """Keep `answer` before the client gets it: None once kept, else the claim holding the key.

        While the store is down the write is retried (and the claim's renewal goes on, so it
        holds again as soon as the store is back); past `settle_timeout_s` the answer is
        dropped and the client gets IdempotencyUnavailable instead of it. A claim that lapsed
        meanwhile does not matter: the write keeps the answer unless another request has
        taken the key, whose claim then comes back instead.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._settle_timeout_s
        wait = _SETTLE_FIRST_WAIT_S
        kept = False
        try:
            while True:
                try:
                    holder = await self.store.complete(
                        key, owner, request_print, answer, self._retention_ms, tenant=tenant
                    )
                except StoreUnavailable as exc:
                    if loop.time() + wait > give_up:
                        log.warning("idempotency record %s not kept, the store is unavailable: %s", key[:12], exc)
                        raise IdempotencyUnavailable(
                            "The answer could not be recorded for this Idempotency-Key (the idempotency store is "
                            "unreachable); retry with the same key."
                        ) from exc
                    await asyncio.sleep(wait)
                    wait = min(wait * 2, _SETTLE_MAX_WAIT_S)
                    continue
                kept = True
                # A write that timed out yet landed finds our own answer there: that is ours kept.
                return None if holder is not None and holder.answer == answer else holder
        finally:
            self._forget(key, owner)
            if not kept:
                self._release(key, owner)

    def _release(self, key: str, owner: str) -> None:
        """Free the key in the background (the client's answer does not wait); if the store is
        down, the lease lapses by itself within `lease_s`."""
        self._forget(key, owner)
        task = asyncio.get_running_loop().create_task(self._free(key, owner))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    def _forget(self, key: str, owner: str) -> None:
        """Stop renewing our claim on `key`; another request of this gateway may hold it by now."""
        if self._running.get(key) == owner:
            del self._running[key]

    async def _free(self, key: str, owner: str) -> None:
        try:
            await self.store.release(key, owner)
        except StoreUnavailable as exc:
            log.warning("idempotency store unavailable when releasing %s: %s", key[:12], exc)

    async def _renew(self) -> None:
        """Keep the claims of running requests alive, a third of a lease at a time (a crashed
        gateway lets them lapse). One task and one store call for all of them: a task per
        request cost more than the rest of the key's handling."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            if not self._running:
                continue
            try:
                await self.store.renew(dict(self._running), self._lease_ms)
            except StoreUnavailable as exc:
                log.warning("idempotency lease renewal failed: %s", exc)

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        await self.store.aclose()


class _Unstarted:
    """A stream's recording, which releases its key also when it is closed before it started:
    a generator closed before its first step never runs its `finally` (a client gone before the
    answer began would otherwise leave its key claimed, and renewed, for good)."""

    __slots__ = ("_on_unstarted", "_source", "_started")

    def __init__(self, source: AsyncGenerator[bytes, None], on_unstarted: Callable[[], None]) -> None:
        self._source = source
        self._on_unstarted = on_unstarted
        self._started = False

    def __aiter__(self) -> "_Unstarted":
        return self

    async def __anext__(self) -> bytes:
        self._started = True
        return await self._source.__anext__()

    async def aclose(self) -> None:
        if not self._started:
            self._started = True
            self._on_unstarted()
        await self._source.aclose()


def _done_at(data: bytes) -> int | None:
    """Where the final `data: [DONE]` event starts in `data`, if `data` ends the stream."""
    trimmed = data.rstrip()
    if not trimmed.endswith(_STREAM_DONE):
        return None
    return len(trimmed) - len(_STREAM_DONE)


def _superseded(holder: Claim, request_print: str) -> dict[str, dict[str, str | None]]:
    if holder.fingerprint != request_print:
        return error_payload(
            "This Idempotency-Key was used with a different request body while this stream ran.",
            "invalid_request_error",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return error_payload(
        "Another request with this Idempotency-Key answered first; retry to receive its answer.",
        "invalid_request_error",
        param="Idempotency-Key",
        code="idempotency_key_in_use",
    )
