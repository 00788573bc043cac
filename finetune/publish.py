"""Making a trained adapter servable, and knowing when it is.

`SidecarPublisher` publishes it to the region's sync sidecar as this region's contribution
(an upload of its files, with a token of scope `adapters`): the sidecar loads it into every
engine of the region and gossips it to the other regions, whose sidecars load it too.
`EnginePublisher` loads it into one engine with the engine's own API (`/v1/load_lora_adapter`,
vLLM's and ours): the embedded default, where the gateway's one local engine is the region.
Either way the job is told the adapter is servable only once the region's gateway lists it
(`GET /v1/models`), so a client that reads `fine_tuned_model` can use it at once.

The worker's credential (`Credentials`): a token read from a file at each use (whoever writes
the file renews it: the embedded gateway does), or one got from an OAuth2 issuer with the
client-credentials grant and kept until shortly before it expires.
"""

import asyncio
import io
import tarfile
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import httpx

__all__ = ["Credentials", "EnginePublisher", "NotServable", "Publisher", "Serving", "SidecarPublisher"]


class NotServable(RuntimeError):
    """The adapter could not be made servable. `reason` is for the job's owner (no address, no
    path); the message, with the details, is for the worker's log."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(f"{reason}: {details}" if details else reason)
        self.reason = reason


class Publisher(Protocol):
    async def publish(self, name: str, adapter: Path, base_model: str) -> str:
        """Make the adapter at `adapter` this region's contribution to `name`, and return once
        `name` is servable; the version published (for `withdraw`). NotServable when it cannot be."""

    async def unpublish(self, name: str) -> None:
        """Take `name` back (its job was cancelled as it was published); NotServable on failure."""

    async def withdraw(self, name: str, version: str) -> None:
        """Take back this region's contribution to `name` while it is still `version` (the
        other regions' stay served); NotServable on failure."""


class Credentials:
    """The worker's bearer token: none, the one in `token_file` (read at each use), or one from
    `token_url` for `client_id` and `client_secret` (client credentials, HTTP Basic), asking
    for `scopes`, renewed a minute before it expires."""

    def __init__(
        self,
        token_file: Path | None = None,
        token_url: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        scopes: str = "chat admin adapters",
    ) -> None:
        self._token_file, self._token_url = token_file, token_url
        self._client = (client_id, client_secret) if client_id and client_secret else None
        self._scopes = scopes
        self._token, self._expires = "", 0.0

    async def headers(self) -> dict[str, str]:
        token = await self._current()
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _current(self) -> str:
        if self._token_file is not None:
            try:
                return (await asyncio.to_thread(self._token_file.read_text)).strip()
            except OSError:
                return ""
        if self._token_url is None or self._client is None:
            return ""
        if time.monotonic() < self._expires - 60:
            return self._token
        async with httpx.AsyncClient(timeout=30) as client:
            try:
                response = await client.post(
                    self._token_url,
                    data={"grant_type": "client_credentials", "scope": self._scopes},
                    auth=self._client,
                )
                answer = response.json()
                token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 300))
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                raise NotServable("the worker could not get a token", f"{self._token_url}: {error}") from error
        self._token, self._expires = token, time.monotonic() + lifetime
        return token


class Serving:
    """The region's gateway, asked which models it serves, with `credentials`."""

    def __init__(
        self, url: str, credentials: Credentials | None = None, timeout_s: float = 120.0, poll_s: float = 0.5
    ) -> None:
        self._url = url.rstrip("/")
        self._credentials = credentials or Credentials()
        self._timeout_s, self._poll_s = timeout_s, poll_s

    async def wait_listed(self, name: str) -> None:
        """Return once the gateway lists `name`; NotServable after the timeout."""
        deadline = time.monotonic() + self._timeout_s
        last = "not asked yet"
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    headers = await self._credentials.headers()
                    response = await client.get(f"{self._url}/v1/models", headers=headers)
                    if response.status_code == 200 and any(m.get("id") == name for m in response.json()["data"]):
                        return
                    last = f"HTTP {response.status_code}"
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
                    last = f"{type(error).__name__}: {error}"
                await asyncio.sleep(self._poll_s)
        raise NotServable(
            f"the gateway did not list it within {self._timeout_s:.0f} s", f"{self._url}/v1/models: {last}"
        )


class EnginePublisher:
    """Loads adapters into one engine (its URL and API key), then waits for the gateway to list them."""

    def __init__(self, engine_url: str, api_key: str | None, serving: Serving) -> None:
        self._url = engine_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._serving = serving
        self._loaded: dict[str, str] = {}  # name -> the folder this publisher last loaded as it

    async def publish(self, name: str, adapter: Path, base_model: str) -> str:
        """Loaded in place: the one engine is the region, so its contribution is the adapter."""
        body = {"lora_name": name, "lora_path": str(adapter), "load_inplace": True}
        url = f"{self._url}/v1/load_lora_adapter"
        await _send("POST", url, "the engine", (200,), json=body, headers=self._headers, within_s=120)
        self._loaded[name] = str(adapter)
        await self._serving.wait_listed(name)
        return str(adapter)

    async def unpublish(self, name: str) -> None:
        url, body = f"{self._url}/v1/unload_lora_adapter", {"lora_name": name}
        await _send("POST", url, "the engine", (200, 404), json=body, headers=self._headers, within_s=60)
        self._loaded.pop(name, None)

    async def withdraw(self, name: str, version: str) -> None:
        if self._loaded.get(name) == version:
            await self.unpublish(name)


class SidecarPublisher:
    """Publishes adapters to the region's sync sidecar (an upload, this region's contribution),
    then waits for the gateway to list them."""

    def __init__(self, sync_url: str, credentials: Credentials, serving: Serving) -> None:
        self._url = sync_url.rstrip("/")
        self._credentials, self._serving = credentials, serving

    async def publish(self, name: str, adapter: Path, base_model: str) -> str:
        archive = await asyncio.to_thread(_tar, adapter)
        headers = await self._credentials.headers() | {"Content-Type": "application/x-tar"}
        params = {"name": name, "base_model": base_model}
        url = f"{self._url}/adapters"
        response = await _send(
            "POST", url, "the sync sidecar", (201,), params=params, content=archive, headers=headers, within_s=300
        )
        try:
            version = str(response.json()["published"])
        except (ValueError, KeyError, TypeError) as error:
            raise NotServable("the sync sidecar's answer was not understood", f"{url}: {error}") from error
        await self._serving.wait_listed(name)
        return version

    async def unpublish(self, name: str) -> None:
        headers = await self._credentials.headers()
        url = f"{self._url}/adapters/{quote(name, safe='')}"
        await _send("DELETE", url, "the sync sidecar", (200, 404), headers=headers, within_s=60)

    async def withdraw(self, name: str, version: str) -> None:
        """409: a newer contribution of this region replaced it, which stays."""
        headers = await self._credentials.headers()
        url = f"{self._url}/adapters/{quote(name, safe='')}/contribution"
        params = {"version": version}
        await _send("DELETE", url, "the sync sidecar", (200, 404, 409), params=params, headers=headers, within_s=60)


async def _send(
    method: str, url: str, who: str, accepted: tuple[int, ...], *, within_s: float, **request: Any
) -> httpx.Response:
    """One call to an engine or a sidecar; NotServable naming `who` (no address: that goes in
    the details, for the log) when it cannot be reached or answers other than `accepted`."""
    async with httpx.AsyncClient(timeout=within_s) as client:
        try:
            response = await client.request(method, url, **request)
        except httpx.HTTPError as error:
            raise NotServable(f"{who} could not be reached", f"{url}: {error}") from error
    if response.status_code not in accepted:
        details = f"{url}: HTTP {response.status_code} {response.text[:500]}"
        raise NotServable(f"{who} refused it (HTTP {response.status_code})", details)
    return response


def _tar(folder: Path) -> bytes:
    """The adapter's files, flat, as the sidecar's upload takes them (PEFT writes a few MB)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                tar.add(path, arcname=path.name)
    return buffer.getvalue()
