"""Where authorization codes wait for their exchange: in this process (the embedded default)
or in Redis (every worker and replica of a region sees every code).

A code is good once: `take` removes it as it reads it (`GETDEL` in Redis), so two exchanges of
one code can never both succeed. Codes are kept under their SHA-256, never in clear.
"""

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

__all__ = ["CODE_TTL_S", "CodeGrant", "CodeStore", "CodesUnavailable", "InProcessCodes", "RedisCodes"]

CODE_TTL_S = 60  # RFC 6749 §4.1.2: codes expire shortly after they are issued


class CodesUnavailable(Exception):
    """The store cannot keep or give back a code now (Redis unreachable, or too many codes waiting)."""


@dataclass(frozen=True, slots=True)
class CodeGrant:
    """What a code was issued for: whom, to which client and redirect URI, with which PKCE challenge."""

    client_id: str
    redirect_uri: str
    code_challenge: str  # BASE64URL(SHA256(code_verifier)), RFC 7636 §4.2
    subject: str
    scope: str
    expires_at: float  # time.time()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "CodeGrant":
        return cls(**json.loads(text))


class CodeStore(Protocol):
    async def put(self, code: str, grant: CodeGrant) -> None: ...

    async def take(self, code: str) -> CodeGrant | None:
        """The code's grant, removed; None when it is unknown, taken already or expired."""
        ...

    async def aclose(self) -> None: ...


def _key(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


class InProcessCodes:
    def __init__(self, max_codes: int = 10_000) -> None:
        self._max_codes = max_codes
        self._grants: dict[str, CodeGrant] = {}

    async def put(self, code: str, grant: CodeGrant) -> None:
        if len(self._grants) >= self._max_codes:
            now = time.time()
            self._grants = {key: g for key, g in self._grants.items() if g.expires_at > now}
            if len(self._grants) >= self._max_codes:
                raise CodesUnavailable("too many sign-ins are waiting for their exchange")
        self._grants[_key(code)] = grant

    async def take(self, code: str) -> CodeGrant | None:
        grant = self._grants.pop(_key(code), None)
        return grant if grant is not None and grant.expires_at > time.time() else None

    async def aclose(self) -> None:
        self._grants.clear()


class RedisCodes:
    def __init__(self, url: str, *, prefix: str = "switchyard:code:", timeout_s: float = 1.0) -> None:
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, decode_responses=True
        )
        self._prefix = prefix

    async def put(self, code: str, grant: CodeGrant) -> None:
        ttl_s = max(1, int(grant.expires_at - time.time()))
        try:
            await self._redis.set(self._prefix + _key(code), grant.to_json(), ex=ttl_s)
        except (RedisError, OSError) as exc:
            raise CodesUnavailable(f"Redis: {exc}") from None

    async def take(self, code: str) -> CodeGrant | None:
        try:
            text = await self._redis.getdel(self._prefix + _key(code))
        except (RedisError, OSError) as exc:
            raise CodesUnavailable(f"Redis: {exc}") from None
        if text is None:
            return None
        grant = CodeGrant.from_json(text if isinstance(text, str) else text.decode())
        return grant if grant.expires_at > time.time() else None

    async def aclose(self) -> None:
        await self._redis.aclose()
