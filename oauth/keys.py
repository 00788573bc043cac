"""Where verification keys come from: a fixed set, or an issuer's JWKS (a URL or a file).

`RemoteJwks` keeps a fetched JWKS for `max_age_s`. A token whose `kid` is unknown makes it
fetch again at once, but at most once per `min_refetch_s` and with every caller waiting on
the same fetch: a flood of made-up `kid`s costs the issuer one request per interval. When a
fetch fails the keys already known stay in use.
"""

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, Protocol

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

__all__ = ["KeySource", "RemoteJwks", "StaticKeys", "find_key"]

log = logging.getLogger(__name__)


class KeySource(Protocol):
    async def key(self, kid: str | None) -> Key | None:
        """The verification key named `kid` (None: the only one), or None when there is none."""
        ...


def find_key(keys: KeySet, kid: str | None) -> Key | None:
    """The key named `kid`; without a `kid`, the only key when there is exactly one."""
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((key for key in keys.keys if key.kid == kid), None)


class StaticKeys:
    """Keys known in advance: a JWKS document (`{"keys": [...]}`) or a joserfc `KeySet`."""

    def __init__(self, keys: KeySet | dict[str, Any]) -> None:
        self._keys = keys if isinstance(keys, KeySet) else KeySet.import_key_set(keys)  # type: ignore[arg-type]

    async def key(self, kid: str | None) -> Key | None:
        return find_key(self._keys, kid)


class RemoteJwks:
    def __init__(
        self,
        source: str,
        *,
        max_age_s: float = 600.0,
        min_refetch_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.source = source  # an http(s) URL, or a file's path
        self.fetches = 0  # attempts, for tests and logs
        self._max_age_s = max_age_s
        self._min_refetch_s = min_refetch_s
        self._timeout_s = timeout_s
        self._keys = KeySet([])
        self._fetched_at = -float("inf")  # last attempt, successful or not
        self._loaded_at = -float("inf")  # last success
        self._fetching: asyncio.Future[None] | None = None

    async def key(self, kid: str | None) -> Key | None:
        now = time.monotonic()
        if now - self._loaded_at > self._max_age_s and now - self._fetched_at >= self._min_refetch_s:
            await self._refetch()
        found = find_key(self._keys, kid)
        if found is None and time.monotonic() - self._fetched_at >= self._min_refetch_s:
            await self._refetch()
            found = find_key(self._keys, kid)
        return found

    async def _refetch(self) -> None:
        """One fetch at a time; callers that come meanwhile wait for it."""
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._fetch())
        fetching = self._fetching
        try:
            await asyncio.shield(fetching)
        finally:
            if fetching.done() and self._fetching is fetching:
                self._fetching = None

    async def _fetch(self) -> None:
        self._fetched_at = time.monotonic()
        self.fetches += 1
        try:
            document = await self._read()
            keys = KeySet.import_key_set(document)
        except (OSError, httpx.HTTPError, ValueError, KeyError, TypeError, RecursionError, JoseError) as exc:
            log.warning(
                "JWKS from %s unavailable (%s); keeping the %d keys known", self.source, exc, len(self._keys.keys)
            )
            return
        self._keys, self._loaded_at = keys, time.monotonic()

    async def _read(self) -> Any:
        if not self.source.startswith(("https://", "http://")):
            return json.loads(await asyncio.to_thread(Path(self.source).read_text))
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            response = await client.get(self.source, headers={"accept": "application/json"})
            response.raise_for_status()
            return response.json()
