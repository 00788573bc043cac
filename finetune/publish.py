"""Making a trained adapter servable, and knowing when it is.

`EnginePublisher` loads it into one engine with the engine's own API (`/v1/load_lora_adapter`,
vLLM's and ours): the embedded default, where the gateway's one local engine is the region.
Either way the job is told the adapter is servable only once the region's gateway lists it
(`GET /v1/models`), so a client that reads `fine_tuned_model` can use it at once.
"""

import asyncio
import time
from pathlib import Path
from typing import Protocol

import httpx

__all__ = ["EnginePublisher", "NotServable", "Publisher", "Serving"]


class NotServable(RuntimeError):
    """The adapter could not be made servable. `reason` is for the job's owner (no address, no
    path); the message, with the details, is for the worker's log."""

    def __init__(self, reason: str, details: str = "") -> None:
        super().__init__(f"{reason}: {details}" if details else reason)
        self.reason = reason


class Publisher(Protocol):
    async def publish(self, name: str, adapter: Path, base_model: str) -> None:
        """Make the adapter at `adapter` servable as `name`; NotServable when it cannot be."""

    async def unpublish(self, name: str) -> None:
        """Take `name` back (its job was cancelled as it was published); NotServable on failure."""


class Serving:
    """The region's gateway, asked which models it serves, with the token in `token_file`
    (read at each ask: whoever writes it renews it) when there is one."""

    def __init__(self, url: str, token_file: Path | None = None, timeout_s: float = 120.0, poll_s: float = 0.5) -> None:
        self._url = url.rstrip("/")
        self._token_file = token_file
        self._timeout_s, self._poll_s = timeout_s, poll_s

    def _headers(self) -> dict[str, str]:
        if self._token_file is None:
            return {}
        try:
            token = self._token_file.read_text().strip()
        except OSError:
            return {}
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def wait_listed(self, name: str) -> None:
        """Return once the gateway lists `name`; NotServable after the timeout."""
        deadline = time.monotonic() + self._timeout_s
        last = "not asked yet"
        async with httpx.AsyncClient(timeout=10) as client:
            while time.monotonic() < deadline:
                try:
                    response = await client.get(f"{self._url}/v1/models", headers=self._headers())
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

    async def publish(self, name: str, adapter: Path, base_model: str) -> None:
        body = {"lora_name": name, "lora_path": str(adapter), "load_inplace": True}
        async with httpx.AsyncClient(timeout=120) as client:
            try:
                response = await client.post(f"{self._url}/v1/load_lora_adapter", json=body, headers=self._headers)
            except httpx.HTTPError as error:
                raise NotServable("the engine could not be reached", f"{self._url}: {error}") from error
        if response.status_code != 200:
            details = f"{self._url}: HTTP {response.status_code} {response.text[:500]}"
            raise NotServable(f"the engine refused it (HTTP {response.status_code})", details)
        await self._serving.wait_listed(name)

    async def unpublish(self, name: str) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            try:
                response = await client.post(
                    f"{self._url}/v1/unload_lora_adapter", json={"lora_name": name}, headers=self._headers
                )
            except httpx.HTTPError as error:
                raise NotServable("the engine could not be reached", f"{self._url}: {error}") from error
        if response.status_code not in (200, 404):
            raise NotServable(f"the engine refused to unload it (HTTP {response.status_code})")
