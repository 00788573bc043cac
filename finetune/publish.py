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

__all__ = ["Credentials", "EnginePublisher", "NotServable", "Publisher", "Serving", "SidecarPublisher", "Superseded"]


class NotServable(RuntimeError):
    """The adapter could not be made servable. `reason` is for the job's owner (no address, no
    path); the message, with the details, is for the worker's log. `lasting`: asking again
    will not help (a refusal of the adapter itself), unlike an engine or sidecar away."""

    def __init__(self, reason: str, details: str = "", *, lasting: bool = False) -> None:
        super().__init__(f"{reason}: {details}" if details else reason)
        self.reason = reason
        self.lasting = lasting


class Superseded(RuntimeError):
    """A conditional change found the region's part of the name moved on (another job's now)."""


class Publisher(Protocol):
    """A region's parts of names: `put` makes an adapter the region's part of a name (what
    clients are served under it, stacked with the other regions' parts where a sidecar does
    that) and names the part with a token; `withdraw` and a `put` that `replaces` act only
    while the part is still the one their token names (Superseded otherwise, for `put`)."""

    async def put(self, name: str, adapter: Path, base_model: str, replaces: str | None = None) -> str:
        """The adapter at `adapter` as this region's part of `name`; the part's token."""

    async def wait_listed(self, name: str) -> None:
        """Return once the region's gateway lists `name`; NotServable after its timeout."""

    async def withdraw(self, name: str, token: str) -> None:
        """This region's part of `name` taken back while it is `token`'s (else left)."""

    async def unpublish(self, name: str) -> None:
        """`name` taken back altogether (a job's own name)."""

    async def known(self) -> set[str]:
        """The names the region's engine or sidecar has now (what a restore need not put)."""


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
    """Loads adapters into one engine (its URL and API key), the region's one engine (the
    embedded default): a part's token is the adapter's folder, which the engine lists as the
    name's `root`; a conditional change reads it back first."""

    def __init__(self, engine_url: str, api_key: str | None, serving: Serving) -> None:
        self._url = engine_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._serving = serving

    async def put(self, name: str, adapter: Path, base_model: str, replaces: str | None = None) -> str:
        if replaces is not None and await self._root(name) != replaces:
            raise Superseded(name)
        body = {"lora_name": name, "lora_path": str(adapter), "load_inplace": True}
        url = f"{self._url}/v1/load_lora_adapter"
        await _send("POST", url, "the engine", (200,), json=body, headers=self._headers, within_s=120)
        return str(adapter)

    async def wait_listed(self, name: str) -> None:
        await self._serving.wait_listed(name)

    async def withdraw(self, name: str, token: str) -> None:
        if await self._root(name) == token:
            await self.unpublish(name)

    async def unpublish(self, name: str) -> None:
        url, body = f"{self._url}/v1/unload_lora_adapter", {"lora_name": name}
        await _send("POST", url, "the engine", (200, 404), json=body, headers=self._headers, within_s=60)

    async def known(self) -> set[str]:
        return set(await self._cards())

    async def _root(self, name: str) -> str | None:
        """The folder the engine serves `name` from (None: it serves no such name)."""
        return (await self._cards()).get(name)

    async def _cards(self) -> dict[str, str]:
        """The engine's models: each name and the folder it serves it from."""
        url = f"{self._url}/v1/models"
        response = await _send("GET", url, "the engine", (200,), headers=self._headers, within_s=30)
        try:
            return {str(card["id"]): str(card.get("root")) for card in response.json()["data"]}
        except (ValueError, KeyError, TypeError) as error:
            raise NotServable("the engine's model list was not understood", f"{self._url}: {error}") from error


class SidecarPublisher:
    """Publishes adapters to the region's sync sidecar (an upload of the region's part); a
    part's token is its sequence number there, which conditional changes name."""

    def __init__(self, sync_url: str, credentials: Credentials, serving: Serving) -> None:
        self._url = sync_url.rstrip("/")
        self._credentials, self._serving = credentials, serving

    async def put(self, name: str, adapter: Path, base_model: str, replaces: str | None = None) -> str:
        archive = await asyncio.to_thread(_tar, adapter)
        headers = await self._credentials.headers() | {"Content-Type": "application/x-tar"}
        params = {"name": name, "base_model": base_model} | ({"replaces": replaces} if replaces is not None else {})
        url = f"{self._url}/adapters"
        response = await _send(
            "POST", url, "the sync sidecar", (201, 409), params=params, content=archive, headers=headers, within_s=300
        )
        if response.status_code == 409:
            _expect_code(response, "contribution_changed", url)
            raise Superseded(name)
        try:
            return str(int(response.json()["seq"]))
        except (ValueError, KeyError, TypeError) as error:
            raise NotServable("the sync sidecar's answer was not understood", f"{url}: {error}") from error

    async def wait_listed(self, name: str) -> None:
        await self._serving.wait_listed(name)

    async def withdraw(self, name: str, token: str) -> None:
        headers = await self._credentials.headers()
        url = f"{self._url}/adapters/{quote(name, safe='')}/contribution"
        response = await _send(
            "DELETE", url, "the sync sidecar", (200, 404, 409), params={"seq": token}, headers=headers, within_s=60
        )
        if response.status_code == 404:  # none left; a sidecar without the route answers `not_found`
            _expect_code(response, "contribution_not_found", url)
        elif response.status_code == 409:  # moved on: another job's part now, which stays
            _expect_code(response, "contribution_changed", url)

    async def unpublish(self, name: str) -> None:
        headers = await self._credentials.headers()
        url = f"{self._url}/adapters/{quote(name, safe='')}"
        await _send("DELETE", url, "the sync sidecar", (200, 404), headers=headers, within_s=60)

    async def known(self) -> set[str]:
        """The names the registry holds (live or retired: a retired one is not put back)."""
        url = f"{self._url}/adapters"
        response = await _send("GET", url, "the sync sidecar", (200,), within_s=30)
        try:
            return {str(adapter["name"]) for adapter in response.json()["adapters"]}
        except (ValueError, KeyError, TypeError) as error:
            raise NotServable("the sync sidecar's list was not understood", f"{url}: {error}") from error


def _expect_code(response: httpx.Response, code: str, url: str) -> None:
    """NotServable unless the refusal's error code is `code` (a route this sidecar lacks says another)."""
    try:
        found = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        found = None
    if found != code:
        details = f"{url}: HTTP {response.status_code} {response.text[:300]}"
        raise NotServable(f"the sync sidecar refused it (HTTP {response.status_code})", details, lasting=True)


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
        lasting = 400 <= response.status_code < 500 and response.status_code not in (408, 425, 429)
        raise NotServable(f"{who} refused it (HTTP {response.status_code})", details, lasting=lasting)
    return response


def _tar(folder: Path) -> bytes:
    """The adapter's files, flat, as the sidecar's upload takes them (PEFT writes a few MB)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                tar.add(path, arcname=path.name)
    return buffer.getvalue()
