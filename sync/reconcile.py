"""Hot-loading: make every local engine serve what the registry says, again and again.

Each pass, for every served name: fetch and verify the blobs its recipe needs, materialize
each version, stack them (sync/merge.py) into `<state>/served/<recipe digest>`, then for
each engine whose `/v1/models` does not show the name at that path: load it as
`name@<digest>`, move the public name to it (`load_inplace`), and unload the staging name
whatever happened in between (a refused move leaves the public name as it was and nothing
else loaded; the next pass tries again). A name the engine serves as a base model is never
loaded there. Names no longer served, and staging names left by a pass that never finished
(a sidecar killed mid-move), are unloaded. An engine that restarted shows nothing loaded,
so the next pass loads everything again. Stacks that nothing serves or holds any more are
removed from disk.
"""

import asyncio
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from protocol.dns import ResolveFailed, addresses, resolver, url_of
from sync import crdt
from sync.adapters import materialize
from sync.crdt import Recipe
from sync.merge import AdapterPart, Unmergeable, merge_adapters
from sync.node import SyncNode
from sync.peers import Peers

__all__ = ["STAGING_SEPARATOR", "Reconciler"]

STAGING_SEPARATOR = "@"  # `name@<digest>`: a stack being loaded, never a public name

log = logging.getLogger(__name__)


@dataclass
class EngineView:
    """What the reconciler last saw of one engine: adapter name -> loaded path."""

    url: str
    loaded: dict[str, str] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # base model name -> its root (a path, or the name)
    refused: dict[str, str] = field(default_factory=dict)  # adapter name -> why this engine does not serve it
    up: bool = False
    error: str | None = None


class UnreadableModels(ValueError):
    """An engine's `/v1/models` answer that is not a model list."""


def _cards(content: bytes) -> list[tuple[str, str, bool]]:
    """(name, root, whether it is an adapter) of each card in a `/v1/models` answer."""
    try:
        cards = json.loads(content)["data"]
        return [(str(card["id"]), str(card.get("root") or card["id"]), bool(card.get("parent"))) for card in cards]
    except (ValueError, RecursionError, LookupError, TypeError, AttributeError) as exc:  # its JSON or its shape
        raise UnreadableModels(f"not a model list: {exc}") from None


class Reconciler:
    def __init__(self, node: SyncNode, peers: Peers, client: httpx.AsyncClient) -> None:
        self.node = node
        self.peers = peers
        self.client = client
        self.engines = [EngineView(str(url).rstrip("/")) for url in node.settings.engines]
        settings = node.settings
        self._resolver = resolver(settings.nameservers, 5.0) if settings.engines_dns else None
        self._dns_failing = False  # a failure was logged (once per outage)
        self.root = node.settings.state
        self.problems: dict[str, str] = {}  # adapter name -> why it is not served here
        self.stacked: dict[str, Path] = {}  # adapter name -> its merged folder, ready for the engines
        self.passes = 0

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception:  # a pass must never end the loop
                log.exception("reconcile pass failed")
            await asyncio.sleep(self.node.settings.reconcile_interval_s)

    async def reconcile(self) -> None:
        await self._discover()
        state = self.node.state
        desired: dict[str, Path] = {}
        for name in sorted(state.entries):
            recipe = crdt.recipe(state, name)
            if recipe is None:
                continue
            folder = await self._prepare(recipe)
            if folder is not None:
                desired[name] = folder
        self.stacked = desired
        for engine in self.engines:
            await self._converge(engine, desired)
        self._collect(desired)
        self.passes += 1

    async def _discover(self) -> None:
        """The engines now: the settings' own and `engines_dns`'s records. An engine that joined
        shows nothing loaded, so this pass loads everything into it; a resolver that fails
        changes nothing."""
        settings = self.node.settings
        if self._resolver is None or settings.engines_dns is None:
            return
        try:
            found = await addresses(self._resolver, settings.engines_dns, search=not settings.nameservers)
        except ResolveFailed as error:
            if not self._dns_failing:
                log.warning("could not resolve %s (the engines stay as they were): %s", settings.engines_dns, error)
            self._dns_failing = True
            return
        self._dns_failing = False
        fixed = [str(url).rstrip("/") for url in settings.engines]
        urls = fixed + sorted({url_of("http", address, settings.engines_port) for address in found} - set(fixed))
        views = {engine.url: engine for engine in self.engines}
        for url in sorted(set(urls) - set(views)):
            log.info("engine %s joined from %s", url, settings.engines_dns)
        for url in sorted(set(views) - set(urls)):
            log.info("engine %s left %s", url, settings.engines_dns)
        self.engines = [views.get(url) or EngineView(url) for url in urls]

    # --- the merged adapter, on disk -------------------------------------------------------------

    async def _prepare(self, recipe: Recipe) -> Path | None:
        served = self.root / "served" / recipe.digest
        if served.is_dir():
            return served
        if recipe.base_model not in self.node.settings.base_models:  # a peer's, for another base
            self.problems[recipe.name] = f"its base model {recipe.base_model!r} is not this region's engines'"
            return None
        entry = self.node.state.entries[recipe.name]
        for part in recipe.parts:
            for ref in entry.versions[part.version].files:
                present = self.node.blobs.verify(ref.sha256)  # damage on disk: dropped, fetched again
                if not present and not await self.peers.fetch_blob(ref.sha256, ref.size):
                    self.problems[recipe.name] = f"blob {ref.sha256[:12]} of {part.version[:12]} is not available yet"
                    return None
        (self.root / "served").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".stacking-", dir=self.root / "served") as work:
            parts = [
                AdapterPart(materialize(entry.versions[p.version], self.node.blobs, Path(work) / p.version), p.weight)
                for p in recipe.parts
            ]
            staging = Path(work) / "stack"
            try:
                rank = await asyncio.to_thread(merge_adapters, parts, staging, base_model=recipe.base_model)
            except Unmergeable as exc:
                self.problems[recipe.name] = f"the stack does not merge: {exc}"
                return None
            if rank > self.node.settings.max_rank:
                self.problems[recipe.name] = (
                    f"the stack's rank {rank} is above the engines' maximum {self.node.settings.max_rank}"
                )
                return None
            staging.rename(served)
        self.problems.pop(recipe.name, None)
        log.info("stacked %s: %d part(s), rank %d, recipe %s", recipe.name, len(parts), rank, recipe.digest[:12])
        return served

    def _collect(self, desired: dict[str, Path]) -> None:
        """Remove stacks nothing serves any more: not desired, and loaded in no engine. Only
        after a pass that reached every engine (one not heard from may still read its files)."""
        if not all(engine.up for engine in self.engines):
            return
        keep = {str(folder) for folder in desired.values()}
        keep |= {path for engine in self.engines for path in engine.loaded.values()}
        served = self.root / "served"
        for folder in served.iterdir() if served.is_dir() else ():
            if not folder.name.startswith(".") and str(folder) not in keep:
                shutil.rmtree(folder, ignore_errors=True)
                log.info("removed stack %s: nothing serves it", folder.name[:12])

    # --- the engines -------------------------------------------------------------------------------

    async def _converge(self, engine: EngineView, desired: dict[str, Path]) -> None:
        try:
            engine.loaded, engine.bases = await self._models(engine)
            if engine.error is not None:
                log.info("engine %s answers again", engine.url)
            engine.up, engine.error = True, None
        except (httpx.HTTPError, UnreadableModels) as exc:
            if engine.up or engine.error is None:  # once per outage, not once per pass
                log.warning("engine %s does not answer: %s", engine.url, exc)
            engine.up, engine.error = False, str(exc)
            return
        engine.refused = {name: why for name, why in engine.refused.items() if name in desired}
        for name, folder in desired.items():
            if name in engine.bases:  # the engine refuses the name, or would serve its base model under it
                engine.refused[name] = f"{engine.url} serves a base model named {name!r}"
            elif STAGING_SEPARATOR in name:  # from a peer that does not check names
                engine.refused[name] = f"{STAGING_SEPARATOR!r} is reserved for staging names"
            elif engine.loaded.get(name) != str(folder):
                await self._move(engine, name, folder)
        ours = str(self.root / "served")
        for name, path in list(engine.loaded.items()):
            staging = STAGING_SEPARATOR in name  # a move that never finished: never served on purpose
            if path.startswith(ours) and (staging or name not in desired) and await self._discard(engine, name):
                why = "a staging name" if staging else "no longer served"
                log.info("unloaded %s from %s: %s", name, engine.url, why)

    async def _models(self, engine: EngineView) -> tuple[dict[str, str], dict[str, str]]:
        """The engine's adapters (name -> path) and base models (name -> root), from `/v1/models`."""
        response = await self.client.get(engine.url + "/v1/models")
        response.raise_for_status()
        loaded: dict[str, str] = {}
        bases: dict[str, str] = {}
        for name, root, adapter in _cards(response.content):
            (loaded if adapter else bases)[name] = root
        return loaded, bases

    async def _move(self, engine: EngineView, name: str, folder: Path) -> None:
        staging = f"{name}{STAGING_SEPARATOR}{folder.name[:12]}"
        try:
            try:
                if staging not in engine.loaded:
                    await self._call(engine, "/v1/load_lora_adapter", {"lora_name": staging, "lora_path": str(folder)})
                replace = name in engine.loaded
                body: dict[str, Any] = {"lora_name": name, "lora_path": str(folder), "load_inplace": replace}
                await self._call(engine, "/v1/load_lora_adapter", body)
            finally:  # moved or not, the staging name must not stay: it holds a slot and is served
                await self._discard(engine, staging)
        except httpx.HTTPStatusError as exc:
            engine.refused[name] = f"{engine.url} refused it: {exc.response.text[:300]}"
            log.warning("loading %s into %s failed: %s", name, engine.url, exc.response.text[:300])
            return
        except httpx.HTTPError as exc:
            log.warning("loading %s into %s failed: %s", name, engine.url, exc)
            engine.up, engine.error = False, str(exc)
            return
        engine.loaded[name] = str(folder)
        engine.refused.pop(name, None)
        log.info("%s now serves %s from %s", engine.url, name, folder.name[:12])

    async def _discard(self, engine: EngineView, name: str) -> bool:
        """Unload `name` if the engine holds it; whether it is gone. A failure is logged and
        left to the next pass's clean-up, which finds the name in `/v1/models` again."""
        try:
            response = await self.client.post(engine.url + "/v1/unload_lora_adapter", json={"lora_name": name})
        except httpx.HTTPError as exc:
            log.warning("unloading %s from %s failed: %s", name, engine.url, exc)
            return False
        if response.status_code not in (200, 404):  # 404: not loaded (its load failed, or it was evicted)
            log.warning("unloading %s from %s failed: %s", name, engine.url, response.text[:300])
            return False
        engine.loaded.pop(name, None)
        return True

    async def _call(self, engine: EngineView, path: str, body: dict[str, Any]) -> None:
        response = await self.client.post(engine.url + path, json=body)
        response.raise_for_status()

    def base_models(self) -> dict[str, str]:
        """What the engines serve as base models, as last seen: name -> root (its folder)."""
        return {name: root for engine in self.engines for name, root in engine.bases.items()}

    def describe(self, name: str) -> dict[str, Any]:
        """Where `name` is loaded here, and why not where it is not."""
        stacked = self.stacked.get(name)
        return {
            "stacked": stacked.name if stacked else None,  # the recipe digest whose merged folder is here
            "loaded": {e.url: e.loaded.get(name) for e in self.engines},
            "problem": self.problems.get(name)
            or "; ".join(e.refused[name] for e in self.engines if name in e.refused)
            or None,
        }
