"""Where idempotency records live: in this process (the embedded default) or in Redis.

A record is claimed atomically (`SET NX PX` with an owner token), its lease renewed while
the request runs, and either completed (the answer kept for the retention period) or
released (the key free again), atomically (Lua, in Redis). Only the owner releases or renews;
completing also succeeds when the record is gone (its lease lapsed while the store was down,
or a store restarted empty): the answer about to be sent is then the key's first. Whatever
else holds the key by then is returned instead, so the caller never sends a second answer.
"""

import base64
import itertools
import json
import secrets
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = [
    "Claim",
    "InProcessStore",
    "RedisStore",
    "StoreFull",
    "StoreUnavailable",
    "StoredAnswer",
    "IdempotencyStore",
]


_OWNER_PREFIX = secrets.token_hex(8)  # per process: owners from several gateways never collide
_owners = itertools.count(1)
_SWEEP_STEP, _SWEEP_LIVE = 16, 4  # records looked at per claim, and live ones met before stopping


def _new_owner() -> str:
    """A claim's owner token: only its owner may renew, complete or release it."""
    return f"{_OWNER_PREFIX}-{next(_owners)}"


class StoreUnavailable(Exception):
    """The store cannot be reached: keyed requests cannot be made safe."""


class StoreFull(StoreUnavailable):
    """The in-process store holds as many kept answers as it may: no new claim until some expire."""


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def to_json(self) -> str:
        return json.dumps(
            {"status": self.status, "headers": self.headers, "body": base64.b64encode(self.body).decode()}
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StoredAnswer":
        return cls(int(data["status"]), dict(data["headers"]), base64.b64decode(data["body"]))


@dataclass(frozen=True, slots=True)
class Claim:
    """What a claim attempt found."""

    outcome: Literal["claimed", "running", "completed"]
    fingerprint: str  # of the request that holds the key
    owner: str = ""  # ours, when claimed
    answer: StoredAnswer | None = None  # when completed


class IdempotencyStore(Protocol):
    async def claim(self, key: str, fingerprint: str, lease_ms: int, *, tenant: str = "") -> Claim:
        """Claim `key` for a request of `tenant` (whose share of the store it counts against)."""
        ...

    async def renew(self, claims: Mapping[str, str], lease_ms: int) -> int:
        """Extend the leases of these (key: owner) claims; how many were still theirs."""
        ...

    async def complete(
        self, key: str, owner: str, fingerprint: str, answer: StoredAnswer, retention_ms: int, *, tenant: str = ""
    ) -> Claim | None:
        """Keep `answer` for the key (None), unless another request holds it (its claim)."""
        ...

    async def release(self, key: str, owner: str) -> bool: ...
    async def aclose(self) -> None: ...


def _running(fingerprint: str, owner: str) -> str:
    return json.dumps({"state": "running", "fingerprint": fingerprint, "owner": owner})


def _parse(raw: str | bytes) -> Claim:
    data = json.loads(raw)
    if data["state"] == "completed":
        return Claim("completed", data["fingerprint"], answer=StoredAnswer.from_json(data["answer"]))
    return Claim("running", data["fingerprint"])


@dataclass(slots=True)
class _Record:
    expires: float  # time.monotonic()
    fingerprint: str
    owner: str  # while running
    answer: StoredAnswer | None = None  # once completed
    tenant: str = ""
    size: int = 0


class InProcessStore:
    """For one gateway process (the embedded default): records as plain objects with expiry
    times, taking about `max_bytes`. A kept answer is never dropped before its retention ends
    (its retry would run again and could answer otherwise): when the records fill the budget,
    new claims are refused (StoreFull) until some expire. One tenant's records take at most
    `tenant_share` of it, so no tenant can fill it for the others."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024, *, tenant_share: float = 0.25) -> None:
        self._max_bytes = max_bytes
        self._tenant_max_bytes = int(max_bytes * tenant_share)
        self._bytes = 0
        self._tenant_bytes: Counter[str] = Counter()
        self._records: dict[str, _Record] = {}  # oldest first

    def __len__(self) -> int:
        return len(self._records)

    @property
    def size(self) -> int:
        """What the records take, roughly: keys, answers and a per-record overhead."""
        return self._bytes

    async def claim(self, key: str, fingerprint: str, lease_ms: int, *, tenant: str = "") -> Claim:
        record = self._get(key)
        if record is not None:
            if record.answer is not None:
                return Claim("completed", record.fingerprint, answer=record.answer)
            return Claim("running", record.fingerprint)
        self._sweep()
        if self._bytes >= self._max_bytes:
            self._drop_expired()
            if self._bytes >= self._max_bytes:
                raise StoreFull(
                    f"The idempotency store is full ({self._max_bytes} bytes of kept answers); keyed requests are "
                    "refused until some expire."
                )
        if self._tenant_bytes[tenant] >= self._tenant_max_bytes:
            raise StoreFull(
                f"Your kept answers fill your share of the idempotency store ({self._tenant_max_bytes} bytes); "
                "your keyed requests are refused until some expire."
            )
        owner = _new_owner()
        self._put(key, _Record(time.monotonic() + lease_ms / 1000, fingerprint, owner, tenant=tenant))
        return Claim("claimed", fingerprint, owner)

    async def renew(self, claims: Mapping[str, str], lease_ms: int) -> int:
        renewed = 0
        for key, owner in claims.items():
            record = self._owned(key, owner)
            if record is not None:
                record.expires = time.monotonic() + lease_ms / 1000
                renewed += 1
        return renewed

    async def complete(
        self, key: str, owner: str, fingerprint: str, answer: StoredAnswer, retention_ms: int, *, tenant: str = ""
    ) -> Claim | None:
        record = self._get(key)
        if record is not None and (record.answer is not None or record.owner != owner):
            if record.answer is not None:
                return Claim("completed", record.fingerprint, answer=record.answer)
            return Claim("running", record.fingerprint)
        self._put(key, _Record(time.monotonic() + retention_ms / 1000, fingerprint, "", answer, tenant))
        return None

    async def release(self, key: str, owner: str) -> bool:
        if self._owned(key, owner) is None:
            return False
        self._drop(key)
        return True

    async def aclose(self) -> None:
        self._records.clear()
        self._bytes = 0

    def _get(self, key: str) -> _Record | None:
        record = self._records.get(key)
        if record is not None and record.expires <= time.monotonic():
            self._drop(key)
            return None
        return record

    def _owned(self, key: str, owner: str) -> _Record | None:
        record = self._get(key)
        return record if record is not None and record.answer is None and record.owner == owner else None

    def _put(self, key: str, record: _Record) -> None:
        self._drop(key)
        record.size = len(key) + len(record.fingerprint) + 200  # the dict slot and the record's own
        if record.answer is not None:
            record.size += len(record.answer.body) + sum(len(k) + len(v) for k, v in record.answer.headers.items())
        self._records[key] = record
        self._bytes += record.size
        self._tenant_bytes[record.tenant] += record.size

    def _drop(self, key: str) -> _Record | None:
        record = self._records.pop(key, None)
        if record is not None:
            self._bytes -= record.size
            self._tenant_bytes[record.tenant] -= record.size
            if not self._tenant_bytes[record.tenant]:
                del self._tenant_bytes[record.tenant]
        return record

    def _sweep(self) -> None:
        """Drop expired records from the oldest end, a few at a time, so each claim pays a
        bounded share however many records there are. Records are kept in the order they were
        put, so the expired ones gather there; one that lapses behind live ones goes when it
        reaches the front, when looked up, or by eviction."""
        now, live, expired = time.monotonic(), 0, []
        for key, record in itertools.islice(self._records.items(), _SWEEP_STEP):
            if record.expires <= now:
                expired.append(key)
            else:
                live += 1
                if live == _SWEEP_LIVE:
                    break
        for key in expired:
            self._drop(key)

    def _drop_expired(self) -> None:
        """Every expired record: a whole pass, made only when the budget is full."""
        now = time.monotonic()
        for key in [key for key, record in self._records.items() if record.expires <= now]:
            self._drop(key)


# Each runs atomically in Redis: act only if the record is still ours and still running.
_IF_OWNER = """
local record = redis.call('GET', KEYS[1])
if not record then return 0 end
local data = cjson.decode(record)
if data['state'] ~= 'running' or data['owner'] ~= ARGV[1] then return 0 end
"""
_RELEASE = _IF_OWNER + "return redis.call('DEL', KEYS[1])"
# Every running claim of this gateway in one round trip: KEYS the keys, ARGV the lease, then the owners.
_RENEW = """
local renewed = 0
for i, key in ipairs(KEYS) do
  local record = redis.call('GET', key)
  if record then
    local data = cjson.decode(record)
    if data['state'] == 'running' and data['owner'] == ARGV[i + 1] then
      redis.call('PEXPIRE', key, ARGV[1])
      renewed = renewed + 1
    end
  end
end
return renewed
"""
# ARGV: owner, answer, retention, fingerprint. Answers the record that holds the key instead, if any.
_COMPLETE = """
local record = redis.call('GET', KEYS[1])
if record then
  local data = cjson.decode(record)
  if data['state'] ~= 'running' or data['owner'] ~= ARGV[1] then return record end
end
-- The answer (up to megabytes of JSON) goes in as it came, never decoded and encoded again in Redis.
local done = '{"state":"completed","fingerprint":' .. cjson.encode(ARGV[4]) .. ',"answer":' .. ARGV[2] .. '}'
redis.call('SET', KEYS[1], done, 'PX', ARGV[3])
return false
"""
_RENEW_BATCH = 512  # keys per script call: one call must not hold Redis long


class RedisStore:
    """Shared by every gateway worker and replica of a region."""

    def __init__(self, url: str, *, prefix: str = "switchyard:idem:", timeout_s: float = 1.0) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._prefix = prefix
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
        self._complete = self._redis.register_script(_COMPLETE)

    async def claim(self, key: str, fingerprint: str, lease_ms: int, *, tenant: str = "") -> Claim:
        owner = _new_owner()  # Redis's memory is the operator's to size (noeviction): no share per tenant
        name = self._prefix + key
        try:
            if await self._redis.set(name, _running(fingerprint, owner), nx=True, px=lease_ms):
                return Claim("claimed", fingerprint, owner)
            existing = await self._redis.get(name)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
        if existing is None:  # it expired between the two calls: try once more
            return await self.claim(key, fingerprint, lease_ms)
        return _parse(existing)

    async def renew(self, claims: Mapping[str, str], lease_ms: int) -> int:
        items = list(claims.items())
        renewed = 0
        for start in range(0, len(items), _RENEW_BATCH):
            batch = items[start : start + _RENEW_BATCH]
            keys = [self._prefix + key for key, _ in batch]
            try:
                renewed += int(await self._renew(keys=keys, args=[lease_ms, *(owner for _, owner in batch)]))
            except (RedisError, OSError) as exc:
                raise StoreUnavailable(str(exc)) from exc
        return renewed

    async def complete(
        self, key: str, owner: str, fingerprint: str, answer: StoredAnswer, retention_ms: int, *, tenant: str = ""
    ) -> Claim | None:
        holder = await self._run(self._complete, key, owner, answer.to_json(), retention_ms, fingerprint)
        return None if holder is None else _parse(holder)

    async def release(self, key: str, owner: str) -> bool:
        return bool(await self._run(self._release, key, owner))

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def _run(self, script: Any, key: str, *args: object) -> Any:
        try:
            return await script(keys=[self._prefix + key], args=list(args))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(str(exc)) from exc
