"""Idempotency keys (draft-ietf-httpapi-idempotency-key-header) for the completion routes.

Scope: (tenant, route, key). A request's fingerprint is the sha256 of its canonical JSON
body. The first request claims the key; a duplicate while it runs gets 409; the same key
with another body gets 422; once the answer is complete it is kept (status, headers, body;
a stream's exact events) for the retention period and replayed with
`Idempotent-Replayed: true`. A request that fails before its first byte (or whose answer
is worth retrying: 408, 409, 429, 5xx; or whose stream broke) releases the key.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from app.errors import IdempotencyKeyInUse, IdempotencyKeyReused, IdempotencyUnavailable, InvalidRequest
from app.idempotency_store import IdempotencyStore, StoredAnswer, StoreUnavailable

__all__ = ["KEY_HEADER", "REPLAYED_HEADER", "Idempotency", "fingerprint", "parse_key"]

log = logging.getLogger(__name__)

KEY_HEADER = "idempotency-key"
REPLAYED_HEADER = "idempotent-replayed"
_MAX_KEY_CHARS = 255
_KEPT_HEADERS = frozenset({b"content-type", b"x-request-id", b"x-route-region", b"x-route-replica"})
_RELEASED_STATUSES = frozenset({408, 409, 429})
_STREAM_DONE = b"data: [DONE]"


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


def fingerprint(body: bytes) -> str:
    """sha256 of the body as canonical JSON: key order and white space do not count."""
    canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(
        self,
        store: IdempotencyStore,
        *,
        lease_s: float,
        retention_s: float,
        max_answer_bytes: int,
        on_replay: Callable[[], None] = lambda: None,
    ) -> None:
        self.on_replay = on_replay
        self.store = store
        self._lease_ms = int(lease_s * 1000)
        self._retention_ms = int(retention_s * 1000)
        self._max_answer_bytes = max_answer_bytes
        self._finishing: set[asyncio.Task[None]] = set()
        self._running: dict[str, str] = {}  # key -> owner, for the claims of requests running now
        self._renewer: asyncio.Task[None] | None = None

    async def run(
        self, request: Request, tenant: str, route: str, body: bytes, handler: Callable[[], Awaitable[Response]]
    ) -> Response:
        raw = request.headers.get(KEY_HEADER)
        if raw is None:
            return await handler()
        key = hashlib.sha256(f"{tenant}\x1f{route}\x1f{parse_key(raw)}".encode()).hexdigest()
        request_print = fingerprint(body)
        try:
            claim = await self.store.claim(key, request_print, self._lease_ms)
        except StoreUnavailable as exc:
            log.warning("idempotency store unavailable: %s", exc)
            raise IdempotencyUnavailable() from exc
        if claim.fingerprint != request_print:
            raise IdempotencyKeyReused()
        if claim.outcome == "running":
            raise IdempotencyKeyInUse()
        if claim.answer is not None:
            answer = claim.answer
            self.on_replay()
            return Response(answer.body, status_code=answer.status, headers={**answer.headers, REPLAYED_HEADER: "true"})
        return await self._execute(key, claim.owner, handler)

    async def _execute(self, key: str, owner: str, handler: Callable[[], Awaitable[Response]]) -> Response:
        self._running[key] = owner
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(), name="idempotency-renewer")
        try:
            response = await handler()
        except BaseException:
            self._finish(key, owner, None)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._record(key, owner, response, response.body_iterator)
            return response
        self._finish(key, owner, self._answer(response, bytes(response.body)))
        return response

    async def _record(
        self,
        key: str,
        owner: str,
        response: StreamingResponse,
        source: AsyncIterable[str | bytes | memoryview],
    ) -> AsyncIterator[bytes]:
        """The stream as it goes to the client, kept whole if it ends with [DONE]."""
        chunks: list[bytes] = []
        size, complete = 0, False
        try:
            async for chunk in source:
                data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
                size += len(data)
                if size <= self._max_answer_bytes:
                    chunks.append(data)
                yield data
            complete = b"".join(chunks[-2:]).rstrip().endswith(_STREAM_DONE)
        finally:
            body = b"".join(chunks) if complete and size <= self._max_answer_bytes else None
            self._finish(key, owner, None if body is None else self._answer(response, body))

    def _answer(self, response: Response, body: bytes) -> StoredAnswer | None:
        """What to keep, or None for an answer worth retrying (or too large to keep)."""
        status = response.status_code
        if status >= 500 or status in _RELEASED_STATUSES or len(body) > self._max_answer_bytes:
            return None
        headers = {k.decode(): v.decode() for k, v in response.raw_headers if k in _KEPT_HEADERS}
        return StoredAnswer(status, headers, body)

    def _finish(self, key: str, owner: str, answer: StoredAnswer | None) -> None:
        """Complete or release in the background: the client's answer does not wait on the store."""
        self._running.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._settle(key, owner, answer))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _settle(self, key: str, owner: str, answer: StoredAnswer | None) -> None:
        try:
            if answer is None:
                await self.store.release(key, owner)
            elif not await self.store.complete(key, owner, answer, self._retention_ms):
                log.warning("idempotency record %s was lost before its answer could be kept", key[:12])
        except StoreUnavailable as exc:  # the lease runs out and the key frees itself
            log.warning("idempotency store unavailable when settling %s: %s", key[:12], exc)

    async def _renew(self) -> None:
        """Keep the claims of running requests alive, a third of a lease at a time (a crashed
        gateway lets them lapse). One task for all of them: a task per request cost more
        than the rest of the key's handling."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            for key, owner in list(self._running.items()):
                try:
                    await self.store.renew(key, owner, self._lease_ms)
                except StoreUnavailable as exc:
                    log.warning("idempotency lease renewal failed: %s", exc)
                    break

    async def aclose(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        await self.store.aclose()
