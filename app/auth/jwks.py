"""Where verification keys come from: the built-in issuer's own keys, or an issuer's JWKS.

`RemoteJwks` reads a JWKS from a URL or a file and keeps it for `max_age_s`. A token whose
`kid` is unknown makes it fetch again at once, but at most once per `min_refetch_s` and
with every caller waiting on the same fetch: a flood of made-up `kid`s costs the issuer one
request per interval. When a fetch fails the keys already known stay in use.
"""

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
from joserfc.errors import JoseError
from joserfc.jwk import Key, KeySet

from app.auth.keys import SigningKeys

__all__ = ["LocalKeys", "RemoteJwks"]

log = logging.getLogger(__name__)


def _find(keys: KeySet, kid: str | None) -> Key | None:
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    return next((key for key in keys.keys if key.kid == kid), None)


class LocalKeys:
    """The built-in issuer's keys, read again when the key file changes (a rotation)."""

    def __init__(self, signing: SigningKeys, *, min_reload_s: float = 1.0) -> None:
        self._signing = signing
        self._min_reload_s = min_reload_s
        self._reloaded = 0.0

    async def key(self, kid: str | None) -> Key | None:
        found = _find(self._signing.key_set(), kid)
        now = time.monotonic()
        if found is None and now - self._reloaded >= self._min_reload_s:
            self._reloaded = now
            self._signing.refresh(force=True)
            found = _find(self._signing.key_set(), kid)
        return found


class RemoteJwks:
    def __init__(
        self,
        source: str,
        *,
        max_age_s: float = 600.0,
        min_refetch_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self.source = source
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
        found = _find(self._keys, kid)
        if found is None and time.monotonic() - self._fetched_at >= self._min_refetch_s:
            await self._refetch()
            found = _find(self._keys, kid)
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
        except (OSError, httpx.HTTPError, ValueError, KeyError, TypeError, JoseError) as exc:
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
