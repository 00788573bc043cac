"""Hot-loading: make every local engine serve what the registry says, again and again.

Each pass, for every served name: fetch and verify the blobs its recipe needs, materialize
each version, stack them (sync/merge.py) into `<state>/served/<recipe digest>`, then for
each engine whose `/v1/models` does not show the name at that path: load it as
`name@<digest>` (a failure leaves the public name alone), move the public name to it
(`load_inplace`), and unload the staging name. Names no longer served are unloaded. An
engine that restarted shows nothing loaded, so the next pass loads everything again.
Stacks that nothing serves or holds any more are removed from disk.
"""

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from sync import crdt
from sync.adapters import materialize
from sync.crdt import Recipe
from sync.merge import AdapterPart, merge_adapters
from sync.node import SyncNode
from sync.peers import Peers

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


@dataclass
class EngineView:
    """What the reconciler last saw of one engine: adapter name -> loaded path."""

    url: str
    loaded: dict[str, str] = field(default_factory=dict)
    up: bool = False
    error: str | None = None


class Reconciler:
    def __init__(self, node: SyncNode, peers: Peers, client: httpx.AsyncClient) -> None:
        self.node = node
        self.peers = peers
        self.client = client
        self.engines = [EngineView(str(url).rstrip("/")) for url in node.settings.engines]
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
            except ValueError as exc:
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
            engine.loaded = await self._loaded(engine)
            engine.up, engine.error = True, None
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            engine.up, engine.error = False, str(exc)
            return
        ours = str(self.root / "served")
        for name, folder in desired.items():
            if engine.loaded.get(name) != str(folder):
                await self._move(engine, name, folder)
        for name, path in list(engine.loaded.items()):
            if name not in desired and path.startswith(ours) and "@" not in name:
                await self._call(engine, "/v1/unload_lora_adapter", {"lora_name": name})
                del engine.loaded[name]
                log.info("unloaded %s from %s: no longer served", name, engine.url)

    async def _loaded(self, engine: EngineView) -> dict[str, str]:
        response = await self.client.get(engine.url + "/v1/models")
        response.raise_for_status()
        return {card["id"]: str(card.get("root")) for card in response.json()["data"] if card.get("parent")}

    async def _move(self, engine: EngineView, name: str, folder: Path) -> None:
        staging = f"{name}@{folder.name[:12]}"
        try:
            if staging not in engine.loaded:
                await self._call(engine, "/v1/load_lora_adapter", {"lora_name": staging, "lora_path": str(folder)})
            replace = name in engine.loaded
            body: dict[str, Any] = {"lora_name": name, "lora_path": str(folder), "load_inplace": replace}
            await self._call(engine, "/v1/load_lora_adapter", body)
            await self._call(engine, "/v1/unload_lora_adapter", {"lora_name": staging})
        except httpx.HTTPStatusError as exc:
            self.problems[name] = f"{engine.url} refused it: {exc.response.text[:300]}"
            log.warning("loading %s into %s failed: %s", name, engine.url, exc.response.text[:300])
            return
        except httpx.HTTPError as exc:
            engine.up, engine.error = False, str(exc)
            return
        engine.loaded[name] = str(folder)
        log.info("%s now serves %s from %s", engine.url, name, folder.name[:12])

    async def _call(self, engine: EngineView, path: str, body: dict[str, Any]) -> None:
        response = await self.client.post(engine.url + path, json=body)
        response.raise_for_status()

    def describe(self, name: str) -> dict[str, Any]:
        """Where `name` is loaded here, and why not where it is not."""
        stacked = self.stacked.get(name)
        return {
            "stacked": stacked.name if stacked else None,  # the recipe digest whose merged folder is here
            "loaded": {e.url: e.loaded.get(name) for e in self.engines},
            "problem": self.problems.get(name),
        }
